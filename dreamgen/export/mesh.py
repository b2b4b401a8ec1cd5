"""The exported surface of a geometry: a surface field's own mesh or a density field's isosurface, cleaned up
(``cleanup.py``), decimated to a face budget, with vertex colours (``extract_mesh``) or as input to texture baking
(``texture.py``). Surfaces here are in dreamgen's world frame; ``asset.py`` turns them into the file's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import fast_simplification
import numpy as np
import torch
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.export.asset import ORIGINS
from dreamgen.export.cleanup import clean_lattice, fill_holes, taubin_smooth
from dreamgen.geometry.base import DensityField, SurfaceField, field_device
from dreamgen.geometry.isosurface import (THRESHOLD_RULES, auto_threshold, chunks, density_grid, inside_mesh,
                                          isosurface, query)

FORMATS = ("glb", "obj")


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["glb"])  # any of: glb, obj
    resolution: int = 128  # marching-cubes samples per axis over [-radius, radius]
    threshold: float | None = None  # density iso-level; None = chosen by threshold_rule
    # mean_occupied: mean of the grid densities above floor_ratio * max (threestudio's "auto");
    # otsu: Otsu's threshold over those same above-floor densities.
    threshold_rule: str = "mean_occupied"
    floor_ratio: float = 1e-3  # densities <= floor_ratio * max count as empty space for the automatic rules
    # Keep one solid piece: drop floaters (the largest connected piece stays) and fill cavities inside it.
    largest_component: bool = True
    # Morphological opening and closing of the occupied lattice before extraction, radii in world units (metres;
    # 0 = off): opening removes drips, spikes and fins thinner than about twice its radius; closing fills tunnels,
    # rings and cracks narrower than twice its radius, and hollows behind mouths narrower than four times it. At
    # that scale they are optimisation noise, not shape. The defaults are 2 and 1.5 lattice cells at resolution
    # 128, measured on the world's six objects (docs/export.md). A surface field's surface is put on the same lattice
    # (its signed distance) for them.
    opening_radius: float = 0.03
    closing_radius: float = 0.024
    max_hole_edges: int = 64  # fill mesh holes whose boundary has at most this many edges (0 = off)
    smooth_iterations: int = 10  # Taubin (volume-preserving) smoothing passes against stair-steps (0 = off)
    chunk: int = 65536  # points per density/albedo query
    max_faces: int = 50_000  # decimate (quadric edge collapse) to at most this many faces; 0 = keep every face
    # Where the file's origin is: bottom = the bounding box's bottom centre (the asset rests on y = 0) | center.
    origin: str = "bottom"
    crease_angle: float = 60.0  # degrees: normals stay smooth across edges whose faces meet at less than this
    # True: UV-unwrap and bake the albedo into a texture (glb: PBR baseColorTexture; obj: .mtl + .png beside it);
    # False: per-vertex colours.
    texture: bool = True
    texture_size: int = 1024  # texture width and height in texels
    texture_padding: int = 2  # texels kept free around each UV chart when packing the atlas
    texture_chart_area: float = 0.01  # largest UV chart, as a fraction of the surface area (0 = no limit; slower)
    texture_dilation: int = 8  # grow each chart's colours this many texels outward: filtering never reads background
    turntable_frames: int = 36  # frames of the turntable.gif rendered from the exported mesh; 0 = no turntable
    turntable_resolution: int = 256

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ConfigError(f"export.formats={list(self.formats)}: each must be one of {', '.join(FORMATS)}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(
                f"export.threshold_rule={self.threshold_rule!r}: must be one of {', '.join(THRESHOLD_RULES)}"
            )
        if self.resolution < 8:
            raise ConfigError(f"export.resolution={self.resolution}: must be at least 8")
        if self.origin not in ORIGINS:
            raise ConfigError(f"export.origin={self.origin!r}: must be one of {', '.join(ORIGINS)}")
        if not (math.isfinite(self.crease_angle) and 0.0 <= self.crease_angle <= 180.0):
            raise ConfigError(f"export.crease_angle={self.crease_angle}: must lie in [0, 180] degrees")
        for name in ("opening_radius", "closing_radius"):
            radius = getattr(self, name)
            if not (math.isfinite(radius) and radius >= 0):
                raise ConfigError(f"export.{name}={radius}: must be 0 (off) or a positive length (world units)")
        if self.chunk < 1:
            raise ConfigError(f"export.chunk={self.chunk}: must be positive")
        if not 0.0 < self.floor_ratio < 1.0:
            raise ConfigError(f"export.floor_ratio={self.floor_ratio}: must lie in (0, 1)")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError(f"export.threshold={self.threshold}: must be a positive number or null (automatic)")
        if self.max_faces != 0 and self.max_faces < 4:
            raise ConfigError(f"export.max_faces={self.max_faces}: must be 0 (no limit) or at least 4")
        if self.texture_size < 16:
            raise ConfigError(f"export.texture_size={self.texture_size}: must be at least 16")
        for name in ("texture_padding", "texture_dilation", "turntable_frames", "max_hole_edges",
                     "smooth_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"export.{name}={getattr(self, name)}: must not be negative")
        if not 0.0 <= self.texture_chart_area <= 1.0:
            raise ConfigError(f"export.texture_chart_area={self.texture_chart_area}: must lie in [0, 1]")
        if self.turntable_resolution < 16:
            raise ConfigError(f"export.turntable_resolution={self.turntable_resolution}: must be at least 16")


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric edge-collapse ``mesh`` down to at most ``max_faces`` faces (unchanged if already within budget)."""
    if max_faces <= 0 or len(mesh.faces) <= max_faces:
        return mesh
    verts, faces = fast_simplification.simplify(mesh.vertices, mesh.faces, target_count=max_faces)
    out = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if len(out.faces) > max_faces:  # the collapse count is approximate; the budget is a promise
        raise DreamgenError(f"decimation left {len(out.faces)} faces, above export.max_faces={max_faces}")
    return out


def extract_surface(geometry: DensityField | SurfaceField, cfg: ExportConfig) -> trimesh.Trimesh:
    """An outward-facing, world-space mesh of at most ``cfg.max_faces`` faces: a surface field's own surface, or
    marching cubes on a density field's (cleaned) lattice at the configured (or automatic) iso-level; then small
    holes filled and Taubin-smoothed.

    For density fields the threshold used is stored in ``mesh.metadata["density_threshold"]``.
    """
    if isinstance(geometry, SurfaceField):
        with torch.no_grad():
            verts, faces = geometry.surface()
        if faces.shape[0] == 0:
            raise DreamgenError("cannot export the surface: it is empty (the SDF has no zero crossing in its grid)")
        verts, faces = verts.float().cpu().numpy(), faces.cpu().numpy()
        # process=False: merging the coincident vertices of edges that meet at an sdf = 0 grid vertex would make
        # marching tets' closed, consistently wound surface non-manifold.
        mesh = trimesh.Trimesh(verts, faces, process=False)
        if cfg.opening_radius > 0 or cfg.closing_radius > 0:
            # The density fields' lattice cleanup (drips, tunnels, floaters), on the surface's signed distance.
            grid, spacing, origin, level = surface_lattice(verts, faces, float(geometry.radius), cfg.resolution)
            verts, faces = isosurface(clean_lattice(grid, level, cfg.largest_component, cfg.opening_radius / spacing,
                                                    cfg.closing_radius / spacing), spacing, origin, level)
            mesh = trimesh.Trimesh(verts, faces, process=True)
        metadata = {}
    else:
        grid, spacing, origin = density_grid(geometry, cfg.resolution, cfg.chunk)
        if cfg.threshold is None:
            level = auto_threshold(grid, cfg.threshold_rule, cfg.floor_ratio)
            how = f"automatic ({cfg.threshold_rule})"
        else:
            level, how = float(cfg.threshold), "export.threshold"
        # A level outside the field's range leaves nothing to clean: isosurface then reports it.
        cleaned = clean_lattice(grid, level, cfg.largest_component, cfg.opening_radius / spacing,
                                cfg.closing_radius / spacing)
        verts, faces = isosurface(cleaned, spacing, origin, level, how)
        mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
        metadata = {"density_threshold": level}
    # Surface fields, and marching cubes splitting the lattice's one piece where it holds together only diagonally.
    if cfg.largest_component:
        mesh = _largest_component(mesh)
    mesh = taubin_smooth(fill_holes(mesh, cfg.max_hole_edges), cfg.smooth_iterations)
    mesh = decimate(mesh, cfg.max_faces)
    mesh.metadata.update(metadata)
    return mesh


def surface_lattice(verts: np.ndarray, faces: np.ndarray, radius: float, resolution: int
                    ) -> tuple[np.ndarray, float, np.ndarray, float]:
    """A closed surface (verts [V,3], faces [F,3]) as a density-like lattice over [-radius, radius]^3, for the
    density fields' cleanup and marching cubes: ``band + d`` with d its signed distance (inside positive) clipped
    to ±band, so the iso-level ``band`` is the surface. Returns ``(grid, spacing, origin, level)``.

    Inside is the exact ray-parity test, run only in the surface's bounding box; distances only next to the
    surface, to dense samples on it (within ~spacing/5), so edges stay where the surface puts them."""
    spacing = 2.0 * radius / (resolution - 1)
    origin = np.full(3, -radius, dtype=np.float64)
    band = 2.0 * spacing
    lo = np.clip(np.floor((verts.min(0) - origin) / spacing).astype(int) - 1, 0, resolution - 1)
    hi = np.clip(np.ceil((verts.max(0) - origin) / spacing).astype(int) + 2, 1, resolution)
    box = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)  # [X,Y,Z,3]
    inside = np.zeros((resolution,) * 3, dtype=bool)
    inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = inside_mesh(
        verts, faces, origin + spacing * box.reshape(-1, 3)).reshape(box.shape[:3])
    # Samples within two cells of the other side: the only ones whose distance can be inside the band.
    near = ndimage.binary_dilation(inside, iterations=2) & ndimage.binary_dilation(~inside, iterations=2)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    n_samples = int(np.clip(25.0 * mesh.area / spacing**2, 10_000, 2_000_000))
    samples, _ = trimesh.sample.sample_surface(mesh, n_samples, seed=0)
    dist, _ = cKDTree(samples).query(origin + spacing * np.argwhere(near))
    signed = np.where(inside, band, -band)
    signed[near] = np.where(inside[near], 1.0, -1.0) * np.minimum(dist, band)
    return band + signed, spacing, origin, band


def _largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else mesh


def query_albedo(geometry: DensityField | SurfaceField, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``geometry.albedo`` at ``points`` [N,3] in chunks, on the field's device: float32 [N,3] in [0,1]."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    return np.clip(query(geometry.albedo, chunks(points, chunk), field_device(geometry)), 0.0, 1.0)


def extract_mesh(geometry: DensityField | SurfaceField, cfg: ExportConfig) -> trimesh.Trimesh:
    """``extract_surface`` with RGBA vertex colours from the albedo.

    The threshold used is stored in ``mesh.metadata["density_threshold"]``.
    """
    mesh = extract_surface(geometry, cfg)
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    rgb = query_albedo(geometry, vertices, cfg.chunk)
    rgba = np.concatenate([np.round(rgb * 255.0), np.full((len(rgb), 1), 255.0)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba.astype(np.uint8))
    return mesh
