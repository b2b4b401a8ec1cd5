"""A turntable GIF of an exported mesh file, so a mesh can be judged without a 3-D viewer.

The file is loaded back and read the way a glTF viewer reads it, not in dreamgen's world frame: +Y is up, the camera
orbits around +Y starting at the front (+Z), the file's own normals shade the surface (flat shading where it has
none, as three.js does). An axis or normal mistake in the export therefore shows in the turntable too. Rendering is
z-buffer rasterisation around the bounding sphere: bilinear texture sampling (or interpolated vertex colours),
perspective-correct interpolation and Lambertian shading under a light fixed to the camera.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import trimesh

from dreamgen.errors import DreamgenError
from dreamgen.export.io import write_atomic
from dreamgen.export.texture import rasterize, sample_bilinear

# Light direction in camera space (right, up, back): from the upper left, slightly in front of the object.
_LIGHT = np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])
_AMBIENT = 0.35


class _Surface:
    """Vertices (centred on the bounding-box centre), faces, per-corner normals and a colour lookup for one mesh."""

    def __init__(self, mesh: trimesh.Trimesh):
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.vertices = self.vertices - 0.5 * (self.vertices.min(0) + self.vertices.max(0))
        self.radius = float(np.linalg.norm(self.vertices, axis=1).max())
        self.closed = _closed(self.vertices, self.faces)
        # trimesh keeps normals read from the file in its cache (reading mesh.vertex_normals would compute some).
        if "vertex_normals" in mesh._cache.cache:
            self.corner_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)[self.faces]
        else:
            self.corner_normals = np.repeat(np.asarray(mesh.face_normals, dtype=np.float64)[:, None], 3, axis=1)
        visual = mesh.visual
        self.uv = self.texture = self.colours = None
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            material = visual.material
            # glTF loads as a PBRMaterial (baseColorTexture), OBJ as a SimpleMaterial (image).
            image = getattr(material, "baseColorTexture", None)
            image = getattr(material, "image", None) if image is None else image
            if image is None:
                raise DreamgenError("the mesh has UVs but no base colour texture")
            self.uv = np.asarray(visual.uv, dtype=np.float64)
            self.texture = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        else:
            self.colours = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0

    def colour(self, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
        corners = self.faces[face]
        if self.texture is not None:
            return sample_bilinear(self.texture, np.einsum("nk,nkd->nd", bary, self.uv[corners]))
        return np.einsum("nk,nkd->nd", bary, self.colours[corners])


def _closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Whether the surface, welded by position (UV seams duplicate vertices), is closed and wound outward: then
    back faces are never visible and can be culled."""
    unique, weld = np.unique(vertices, axis=0, return_inverse=True)
    welded = trimesh.Trimesh(unique, weld.reshape(-1)[faces], process=False)
    return bool(welded.is_watertight and welded.is_winding_consistent and welded.volume > 0)


def orbit(azimuth: float, elevation: float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """A glTF viewer's orbit camera around +Y looking at 0: azimuth 0 on +Z (the front), growing towards +X.
    Returns (rotation [3,3] with columns right, up, back; eye [3])."""
    az, el = math.radians(azimuth), math.radians(elevation)
    eye = distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    back = eye / distance
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back], axis=1), eye


def render_views(
    mesh: trimesh.Trimesh,
    azimuths: list[float],
    elevation: float = 15.0,
    resolution: int = 256,
    fov: float = 40.0,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    supersample: int = 2,
) -> np.ndarray:
    """Shaded renders of ``mesh`` (in glTF's frame: +Y up, front +Z) from :func:`orbit` cameras at each azimuth
    (degrees), framed so its bounding sphere fits the vertical ``fov``: uint8 [len(azimuths), resolution,
    resolution, 3]. Each frame is rendered at ``supersample`` times the resolution and box-filtered down."""
    if abs(elevation) >= 90.0:
        raise ValueError(f"elevation {elevation} must lie strictly between -90 and 90 degrees")
    surface = _Surface(mesh)
    size = resolution * supersample
    n = len(azimuths)
    distance = 1.05 * surface.radius / math.sin(math.radians(fov) / 2)
    focal = 0.5 * size / math.tan(math.radians(fov) / 2)
    tri = surface.vertices[surface.faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    frames = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for i, azimuth in enumerate(azimuths):
        rot, eye = orbit(azimuth, elevation, distance)
        cam = (surface.vertices - eye) @ rot  # camera-space (right, up, back) coordinates
        inv_depth = 1.0 / -cam[:, 2]  # the camera sits outside the bounding sphere, so every depth is positive
        xy = np.stack([0.5 * size + focal * cam[:, 0] * inv_depth, 0.5 * size - focal * cam[:, 1] * inv_depth], 1)
        # Back-face culling halves the rasteriser's work; only sound where the surface is closed.
        front = np.einsum("fd,fd->f", face_normals, eye - tri[:, 0]) > 0 if surface.closed else np.ones(len(tri), bool)
        drawn = np.flatnonzero(front)
        faces = surface.faces[drawn]
        face, bary = rasterize(xy[faces], size, size, inv_depth[faces])
        hit = face >= 0
        f, b = drawn[face[hit]], bary[hit]
        # Screen-space barycentrics -> perspective-correct ones: weight each corner by its 1/depth.
        b = b * inv_depth[surface.faces[f]]
        b /= b.sum(1, keepdims=True)
        normal = np.einsum("nk,nkd->nd", b, surface.corner_normals[f])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        view = eye - np.einsum("nk,nkd->nd", b, surface.vertices[surface.faces[f]])
        normal *= np.sign(np.einsum("nd,nd->n", normal, view))[:, None]  # light back faces like front faces
        lambert = np.clip(normal @ (rot @ _LIGHT), 0.0, None)
        image = np.broadcast_to(np.asarray(background, dtype=np.float64), (size, size, 3)).copy()
        image[hit] = surface.colour(f, b) * (_AMBIENT + (1.0 - _AMBIENT) * lambert)[:, None]
        image = image.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
        frames[i] = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return frames


def load_as_viewer(path: Path) -> trimesh.Trimesh:
    """The one mesh of a glb/obj file with its node transform applied (normals from the file kept)."""
    loaded = trimesh.load(path, process=False)
    if not isinstance(loaded, trimesh.Scene):
        return loaded
    nodes = loaded.graph.nodes_geometry
    if len(nodes) != 1:
        raise DreamgenError(f"{path}: expected one mesh, found {len(nodes)}")
    transform, name = loaded.graph[nodes[0]]
    return loaded.geometry[name].apply_transform(transform)


def write_turntable(
    mesh_path: Path,
    out_path: Path,
    n_frames: int = 36,
    resolution: int = 256,
    elevation: float = 15.0,
    fps: float = 12.0,
    fov: float = 40.0,
) -> Path:
    """Load the mesh file at ``mesh_path`` (glb or obj) as a glTF viewer would and write a looping GIF of
    ``n_frames`` shaded views around its +Y axis, starting at its front (+Z), to ``out_path``."""
    mesh = load_as_viewer(Path(mesh_path))
    frames = render_views(mesh, [360.0 * k / n_frames for k in range(n_frames)], elevation, resolution, fov)
    buf = io.BytesIO()
    iio.imwrite(buf, frames, extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)
    return write_atomic(Path(out_path), lambda fh: fh.write(buf.getvalue()))
