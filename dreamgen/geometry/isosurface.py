"""Isosurfaces of density fields: the density lattice, the automatic iso-level, and marching cubes.

Shared by everything that turns a :class:`~dreamgen.geometry.base.DensityField` into a surface or an occupancy: the
DMTet hand-off, mesh export and evaluation, so that they agree on where the surface is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from skimage.filters import threshold_otsu
from skimage.measure import marching_cubes

from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.geometry.base import DensityField, field_device

THRESHOLD_RULES = ("mean_occupied", "otsu")


def query(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[np.ndarray], device: torch.device) -> np.ndarray:
    """``fn`` over float32 point batches [n,3] (no grad, on ``device``), concatenated as a float32 numpy array."""
    out = []
    with torch.no_grad():
        for pts in batches:
            out.append(fn(torch.from_numpy(pts).to(device=device, dtype=torch.float32)).float().cpu().numpy())
    return np.concatenate(out, axis=0)


def chunks(points: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
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
    grid = query(geometry.density, batches, field_device(geometry)).reshape(shape)
    return grid, 2.0 * radius / (resolution - 1), np.full(3, -radius, dtype=np.float64)


def auto_threshold(grid: np.ndarray, rule: str = "mean_occupied", floor_ratio: float = 1e-3) -> float:
    """Iso-level for ``grid`` from the densities above ``floor_ratio * grid.max()`` (the occupied samples).

    ``mean_occupied`` returns their mean, ``otsu`` their Otsu threshold. Empty space is excluded because it fills
    most of the scene and would otherwise drag the level to ~0, where floaters and noise become surface.
    """
    peak = float(grid.max())
    if not peak > 0:
        raise DreamgenError(f"cannot extract a surface: the density field is empty (maximum density {peak:g})")
    occupied = grid[grid > floor_ratio * peak].astype(np.float64)
    if occupied.min() == occupied.max():
        # A two-valued (empty / one density) field: both rules would return that density, where no surface lies.
        return 0.5 * peak
    if rule == "mean_occupied":
        return float(occupied.mean())
    if rule == "otsu":
        return float(threshold_otsu(occupied))
    raise ConfigError(f"unknown threshold rule {rule!r}: must be one of {', '.join(THRESHOLD_RULES)}")


def isosurface(grid: np.ndarray, spacing: float, origin: np.ndarray, level: float,
               how: str = "given") -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at ``level`` on a density lattice (density grows inward) -> verts [V,3] world, faces [F,3]
    wound counter-clockwise seen from outside. ``how`` names where the level came from, for the error message.

    The outermost layer of samples is emptied first, which closes the surface where the object touches the lattice
    bound: the mesh is watertight instead of open at the box faces (and stays inside the bound).
    """
    if not np.isfinite(grid).all():
        raise DreamgenError("cannot extract a surface: the density field contains NaN or Inf values")
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
    return origin + verts * spacing, faces.astype(np.int64)


def inside_mesh(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, cells: int = 64) -> np.ndarray:
    """Exact inside test of a closed mesh: bool [N] for points [N,3], vertices [V,3], faces [F,3].

    A point is inside when a ray from it crosses the surface an odd number of times. The ray runs along +z, slightly
    sheared (projection (x − a·z, y − b·z) with tiny irrational a, b) so that it never passes exactly through a vertex
    or an edge of a mesh extracted on a lattice. Candidate (triangle, point) pairs come from a ``cells``² grid over the
    projected xy extent, so the cost is about (points + faces × cells covered) rather than points × faces.
    """
    a, b = 1e-4 * np.sqrt(2.0), 1e-4 * np.sqrt(3.0)
    v = np.asarray(vertices, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0 or len(faces) == 0:
        return np.zeros(len(p), dtype=bool)
    vxy = np.stack([v[:, 0] - a * v[:, 2], v[:, 1] - b * v[:, 2]], 1)
    pxy = np.stack([p[:, 0] - a * p[:, 2], p[:, 1] - b * p[:, 2]], 1)
    lo = np.minimum(vxy.min(0), pxy.min(0))
    size = np.maximum(np.maximum(vxy.max(0), pxy.max(0)) - lo, 1e-12) / cells

    def cell(xy: np.ndarray) -> np.ndarray:
        return np.clip(((xy - lo) / size).astype(np.int64), 0, cells - 1)

    pc = cell(pxy)
    pid = pc[:, 0] * cells + pc[:, 1]
    order = np.argsort(pid, kind="stable")
    starts = np.searchsorted(pid[order], np.arange(cells * cells + 1))
    tri = np.asarray(faces, dtype=np.int64)
    txy = vxy[tri]  # [F,3,2]
    c0, c1 = cell(txy.min(1)), cell(txy.max(1))
    # Enumerate every (triangle, cell) of each triangle's cell box, then every point of those cells.
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    t_of = np.repeat(np.arange(len(tri)), nx * ny)
    k = np.arange(len(t_of)) - np.repeat(np.cumsum(nx * ny) - nx * ny, nx * ny)
    cx, cy = c0[t_of, 0] + k // ny[t_of], c0[t_of, 1] + k % ny[t_of]
    cid = cx * cells + cy
    n_pts = starts[cid + 1] - starts[cid]
    t_pair = np.repeat(t_of, n_pts)
    j = np.arange(len(t_pair)) - np.repeat(np.cumsum(n_pts) - n_pts, n_pts)
    p_pair = order[np.repeat(starts[cid], n_pts) + j]
    # 2-D barycentrics of the projected point in the projected triangle, then the crossing's height.
    q = txy[t_pair]  # [M,3,2]
    e1, e2, d = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0], pxy[p_pair] - q[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-18
    det = np.where(ok, det, 1.0)
    u = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
    w = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1)
    z = v[tri[t_pair, 0], 2] * (1 - u - w) + v[tri[t_pair, 1], 2] * u + v[tri[t_pair, 2], 2] * w
    above = hit & (z > p[p_pair, 2])
    crossings = np.bincount(p_pair[above], minlength=len(p))
    return crossings % 2 == 1
