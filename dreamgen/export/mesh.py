"""Marching-cubes extraction of a triangle mesh from a density field (the coarse NeRF stage): the surface,
decimated to a face budget, with vertex colours (``extract_mesh``) or as input to texture baking (``texture.py``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import fast_simplification
import numpy as np
import torch
import trimesh
from skimage.filters import threshold_otsu
from skimage.measure import marching_cubes
from torch import Tensor

from dreamgen.errors import ConfigError, DreamgenError

FORMATS = ("glb", "obj")
THRESHOLD_RULES = ("mean_occupied", "otsu")


class DensityField(Protocol):
    """What export needs from a geometry: any object with these members works."""

    radius: float  # the object lives in [-radius, radius]^3

    def density(self, points: Tensor) -> Tensor:  # [N,3] -> [N], non-negative
        ...

    def albedo(self, points: Tensor) -> Tensor:  # [N,3] -> [N,3] in [0,1]
        ...


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["glb"])  # any of: glb, obj
    resolution: int = 128  # marching-cubes samples per axis over [-radius, radius]
    threshold: float | None = None  # density iso-level; None = chosen by threshold_rule
    # mean_occupied: mean of the grid densities above floor_ratio * max (threestudio's "auto");
    # otsu: Otsu's threshold over those same above-floor densities.
    threshold_rule: str = "mean_occupied"
    floor_ratio: float = 1e-3  # densities <= floor_ratio * max count as empty space for the automatic rules
    largest_component: bool = True  # drop floaters: keep the connected piece with the most faces
    chunk: int = 65536  # points per density/albedo query
    max_faces: int = 50_000  # decimate (quadric edge collapse) to at most this many faces; 0 = keep every face
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
        for name in ("texture_padding", "texture_dilation", "turntable_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"export.{name}={getattr(self, name)}: must not be negative")
        if not 0.0 <= self.texture_chart_area <= 1.0:
            raise ConfigError(f"export.texture_chart_area={self.texture_chart_area}: must lie in [0, 1]")
        if self.turntable_resolution < 16:
            raise ConfigError(f"export.turntable_resolution={self.turntable_resolution}: must be at least 16")


def _field_device(geometry: DensityField) -> torch.device:
    # Query points must live where the field's parameters do (a trained NeRF may sit on a GPU).
    params = getattr(geometry, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _query(fn, batches: Iterable[np.ndarray], device: torch.device) -> np.ndarray:
    out = []
    with torch.no_grad():
        for pts in batches:
            out.append(fn(torch.from_numpy(pts).to(device=device, dtype=torch.float32)).float().cpu().numpy())
    return np.concatenate(out, axis=0)


def _chunks(points: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    return (points[start : start + chunk] for start in range(0, len(points), chunk))


def density_grid(geometry: DensityField, resolution: int, chunk: int = 65536) -> tuple[np.ndarray, float, np.ndarray]:
    """Sample the density on a ``resolution^3`` lattice spanning [-radius, radius]^3 (both ends included).

    Returns ``(grid, spacing, origin)`` with ``grid[i, j, k]`` the density at ``origin + spacing * (i, j, k)``.
    """
    radius = float(geometry.radius)
    axis = np.linspace(-radius, radius, resolution, dtype=np.float32)
    shape = (resolution,) * 3
    n = resolution**3
    # Points are built per chunk: the full lattice at resolution 512 would be 1.6 GB of coordinates.
    batches = (
        axis[np.stack(np.unravel_index(np.arange(start, min(start + chunk, n)), shape), axis=-1)]
        for start in range(0, n, chunk)
    )
    grid = _query(geometry.density, batches, _field_device(geometry)).reshape(shape)
    return grid, 2.0 * radius / (resolution - 1), np.full(3, -radius, dtype=np.float64)


def auto_threshold(grid: np.ndarray, rule: str = "mean_occupied", floor_ratio: float = 1e-3) -> float:
    """Iso-level for ``grid`` from the densities above ``floor_ratio * grid.max()`` (the occupied samples).

    ``mean_occupied`` returns their mean, ``otsu`` their Otsu threshold. Empty space is excluded because it fills
    most of the scene and would otherwise drag the level to ~0, where floaters and noise become surface.
    """
    peak = float(grid.max())
    if not peak > 0:
        raise DreamgenError(f"cannot extract a mesh: the density field is empty (maximum density {peak:g})")
    occupied = grid[grid > floor_ratio * peak].astype(np.float64)
    if occupied.min() == occupied.max():
        # A two-valued (empty / one density) field: both rules would return that density, where no surface lies.
        return 0.5 * peak
    if rule == "mean_occupied":
        return float(occupied.mean())
    if rule == "otsu":
        return float(threshold_otsu(occupied))
    raise ConfigError(f"unknown threshold rule {rule!r}: must be one of {', '.join(THRESHOLD_RULES)}")


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric edge-collapse ``mesh`` down to at most ``max_faces`` faces (unchanged if already within budget)."""
    if max_faces <= 0 or len(mesh.faces) <= max_faces:
        return mesh
    verts, faces = fast_simplification.simplify(mesh.vertices, mesh.faces, target_count=max_faces)
    out = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if len(out.faces) > max_faces:  # the collapse count is approximate; the budget is a promise
        raise DreamgenError(f"decimation left {len(out.faces)} faces, above export.max_faces={max_faces}")
    return out


def extract_surface(geometry: DensityField, cfg: ExportConfig) -> trimesh.Trimesh:
    """An outward-facing, world-space mesh of at most ``cfg.max_faces`` faces: marching cubes on the density grid,
    or, for surface geometries (DMTet) that have a ``mesh()`` method, their own mesh.

    For density fields the threshold used is stored in ``mesh.metadata["density_threshold"]``.
    """
    if hasattr(geometry, "mesh"):
        with torch.no_grad():
            mesh = geometry.mesh()
        mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=True)
        return decimate(_largest_component(mesh) if cfg.largest_component else mesh, cfg.max_faces)
    grid, spacing, origin = density_grid(geometry, cfg.resolution, cfg.chunk)
    if not np.isfinite(grid).all():
        raise DreamgenError("cannot extract a mesh: the density field contains NaN or Inf values")
    if cfg.threshold is None:
        level = auto_threshold(grid, cfg.threshold_rule, cfg.floor_ratio)
        how = f"automatic ({cfg.threshold_rule})"
    else:
        level, how = float(cfg.threshold), "export.threshold"
    # Emptying the outermost layer of samples closes the surface where the object touches the scene bound, so the
    # mesh is watertight instead of open at the box faces (and stays inside the bound).
    closed = grid.copy()
    closed[[0, -1], :, :] = closed[:, [0, -1], :] = closed[:, :, [0, -1]] = 0.0
    lo, hi = float(grid.min()), float(closed.max())
    if not lo < level < hi:
        raise DreamgenError(
            f"no surface at density threshold {level:g} ({how}): inside the scene bound the field's density spans "
            f"[{lo:g}, {hi:g}]; set export.threshold=... to a value inside that range"
        )
    # "ascent": density increases inward, so this winding makes face normals point to decreasing density (outward).
    verts, faces, _, _ = marching_cubes(closed, level=level, gradient_direction="ascent")
    verts = origin + verts * spacing
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if cfg.largest_component:
        mesh = _largest_component(mesh)
    mesh = decimate(mesh, cfg.max_faces)
    mesh.metadata["density_threshold"] = level
    return mesh


def _largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else mesh


def query_albedo(geometry: DensityField, points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``geometry.albedo`` at ``points`` [N,3] in chunks, on the field's device: float32 [N,3] in [0,1]."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    return np.clip(_query(geometry.albedo, _chunks(points, chunk), _field_device(geometry)), 0.0, 1.0)


def extract_mesh(geometry: DensityField, cfg: ExportConfig) -> trimesh.Trimesh:
    """``extract_surface`` with RGBA vertex colours from the albedo.

    The threshold used is stored in ``mesh.metadata["density_threshold"]``.
    """
    mesh = extract_surface(geometry, cfg)
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    rgb = query_albedo(geometry, vertices, cfg.chunk)
    rgba = np.concatenate([np.round(rgb * 255.0), np.full((len(rgb), 1), 255.0)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba.astype(np.uint8))
    return mesh
