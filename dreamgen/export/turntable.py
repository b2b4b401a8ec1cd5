"""A turntable GIF of an exported mesh file, so a mesh can be judged without a 3-D viewer.

The file is loaded back (what a viewer would see, not the field it came from) and z-buffer rasterised from cameras
on an orbit around its bounding sphere: bilinear texture sampling (or interpolated vertex colours), perspective-
correct interpolation, smooth normals and Lambertian shading under a light fixed to the camera.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh

from dreamgen.cameras import CameraConfig, make_cameras
from dreamgen.errors import DreamgenError
from dreamgen.export.io import write_atomic
from dreamgen.export.texture import rasterize, sample_bilinear

# Light direction in camera space (right, up, back): from the upper left, slightly in front of the object.
_LIGHT = np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])
_AMBIENT = 0.35


class _Surface:
    """Vertices (centred on the bounding-box centre), faces, smooth normals and a colour lookup for one mesh."""

    def __init__(self, mesh: trimesh.Trimesh):
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.vertices = self.vertices - 0.5 * (self.vertices.min(0) + self.vertices.max(0))
        self.radius = float(np.linalg.norm(self.vertices, axis=1).max())
        self.normals, self.closed = _welded_normals(self.vertices, self.faces)
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


def _welded_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """Area-weighted vertex normals over every vertex at the same position, so UV seams (where vertices are
    duplicated) do not show up as shading creases; and whether the welded surface is closed and wound outward
    (then back faces are never visible and can be culled)."""
    unique, weld = np.unique(vertices, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    welded = trimesh.Trimesh(unique, weld[faces], process=False)
    closed = bool(welded.is_watertight and welded.is_winding_consistent and welded.volume > 0)
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = twice the area
    acc = np.zeros((weld.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, weld[faces[:, k]], face_normals)
    normals = acc[weld]
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12), closed


def render_views(
    mesh: trimesh.Trimesh,
    azimuths: list[float],
    elevation: float = 15.0,
    resolution: int = 256,
    fov: float = 40.0,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    supersample: int = 2,
) -> np.ndarray:
    """Shaded renders of ``mesh`` from each azimuth (degrees, world z-up, dreamgen's camera convention), framed so
    its bounding sphere fits the vertical ``fov``: uint8 [len(azimuths), resolution, resolution, 3].

    Each frame is rendered at ``supersample`` times the resolution and box-filtered down (antialiasing).
    """
    surface = _Surface(mesh)
    size = resolution * supersample
    n = len(azimuths)
    distance = 1.05 * surface.radius / math.sin(math.radians(fov) / 2)
    cams = make_cameras(
        torch.tensor(azimuths, dtype=torch.float64), torch.full((n,), float(elevation), dtype=torch.float64),
        torch.full((n,), distance, dtype=torch.float64), torch.full((n,), float(fov), dtype=torch.float64),
        size, CameraConfig(),
    )
    focal = 0.5 * size / math.tan(math.radians(fov) / 2)
    tri = surface.vertices[surface.faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    frames = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for i, c2w in enumerate(cams.c2w.numpy()):
        rot, eye = c2w[:3, :3], c2w[:3, 3]
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
        normal = np.einsum("nk,nkd->nd", b, surface.normals[surface.faces[f]])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        view = eye - np.einsum("nk,nkd->nd", b, surface.vertices[surface.faces[f]])
        normal *= np.sign(np.einsum("nd,nd->n", normal, view))[:, None]  # light back faces like front faces
        lambert = np.clip(normal @ (rot @ _LIGHT), 0.0, None)
        image = np.broadcast_to(np.asarray(background, dtype=np.float64), (size, size, 3)).copy()
        image[hit] = surface.colour(f, b) * (_AMBIENT + (1.0 - _AMBIENT) * lambert)[:, None]
        image = image.reshape(resolution, supersample, resolution, supersample, 3).mean(axis=(1, 3))
        frames[i] = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return frames


def write_turntable(
    mesh_path: Path,
    out_path: Path,
    n_frames: int = 36,
    resolution: int = 256,
    elevation: float = 15.0,
    fps: float = 12.0,
    fov: float = 40.0,
) -> Path:
    """Load the mesh file at ``mesh_path`` (glb or obj) and write a looping GIF of ``n_frames`` shaded views
    around it, starting at its front (+x), to ``out_path``."""
    mesh = trimesh.load(Path(mesh_path), force="mesh", process=False)
    frames = render_views(mesh, [360.0 * k / n_frames for k in range(n_frames)], elevation, resolution, fov)
    buf = io.BytesIO()
    iio.imwrite(buf, frames, extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)
    return write_atomic(Path(out_path), lambda fh: fh.write(buf.getvalue()))
