"""Tetrahedral grids generated in code: a cube lattice, each cube split into the 6 Kuhn (Freudenthal) tetrahedra.

Cube ``(i, j, k)`` with lower corner ``c`` is split along its main diagonal ``c → c + (1,1,1)``: for each permutation
``π`` of the axes one tetrahedron ``c, c + e_π0, c + e_π0 + e_π1, c + (1,1,1)``. Every cube uses the same diagonal
direction, so the shared square faces of neighbouring cubes are split along the same diagonal and the tetrahedra tile
space conformingly (each triangle is shared by exactly two tetrahedra or lies on the boundary).

Every tetrahedron is stored positively oriented (``det[v1 − v0, v2 − v0, v3 − v0] > 0``): marching tetrahedra
relies on this to give every output triangle the same (outward) winding from one lookup table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

# The 6 edges of a tetrahedron as pairs of local vertex indices.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


@dataclass
class TetGrid:
    verts: Tensor  # [V,3] float, in [-1,1]^3 (scale/shift to a bounding box with to_bbox)
    tets: Tensor  # [T,4] long, positively oriented
    resolution: int  # cubes per axis


def kuhn_grid(resolution: int, device: str | torch.device = "cpu") -> TetGrid:
    """``resolution^3`` cubes over [-1,1]^3 -> ``(resolution+1)^3`` vertices and ``6·resolution^3`` tetrahedra."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be at least 1, got {resolution}")
    n = resolution + 1
    axis = torch.linspace(-1.0, 1.0, n, device=device)
    verts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)  # [V,3]

    # Linear index of vertex (i,j,k) is i·n² + j·n + k, so a unit step along axis a adds stride[a].
    stride = (n * n, n, 1)
    cube = torch.arange(resolution, device=device)
    ci, cj, ck = torch.meshgrid(cube, cube, cube, indexing="ij")
    corner = (ci * stride[0] + cj * stride[1] + ck * stride[2]).reshape(-1)  # [C] lower corner of each cube
    tets = []
    for perm in itertools.permutations(range(3)):
        s0, s1, s2 = (stride[a] for a in perm)
        chain = [corner, corner + s0, corner + s0 + s1, corner + s0 + s1 + s2]
        # det[e_π0, e_π0+e_π1, e_π0+e_π1+e_π2] = sign(π): swap the last two vertices of odd permutations.
        if _permutation_sign(perm) < 0:
            chain[2], chain[3] = chain[3], chain[2]
        tets.append(torch.stack(chain, dim=-1))
    return TetGrid(verts, torch.cat(tets), resolution)


def _permutation_sign(perm: tuple[int, ...]) -> int:
    inversions = sum(1 for a, b in itertools.combinations(perm, 2) if a > b)
    return -1 if inversions % 2 else 1


def to_bbox(unit_verts: Tensor, bbox: Tensor) -> Tensor:
    """unit_verts [V,3] in [-1,1]^3, bbox [2,3] (min, max corner) -> world positions [V,3]."""
    centre, half = (bbox[0] + bbox[1]) * 0.5, (bbox[1] - bbox[0]) * 0.5
    return centre + unit_verts * half


def unique_edges(tets: Tensor) -> tuple[Tensor, Tensor]:
    """tets [T,4] -> unique edges [E,2] (each sorted, smaller index first) and tet_edges [T,6] (indices into edges,
    in the order of ``TET_EDGES``)."""
    local = torch.tensor(TET_EDGES, device=tets.device)  # [6,2]
    pairs = tets[:, local].reshape(-1, 2)  # [T*6,2]
    lo, hi = pairs.min(-1).values, pairs.max(-1).values
    # One int64 key per edge: 1-D unique is an order of magnitude faster than unique(dim=0) on CPU.
    n = int(hi.max()) + 1 if hi.numel() else 1
    keys, inverse = torch.unique(lo * n + hi, return_inverse=True)
    return torch.stack([keys // n, keys % n], dim=-1), inverse.reshape(-1, 6)


def tet_volumes(verts: Tensor, tets: Tensor) -> Tensor:
    """Signed volumes [T] = det[v1 − v0, v2 − v0, v3 − v0] / 6 (positive for positively oriented tetrahedra)."""
    v = verts[tets]  # [T,4,3]
    return torch.linalg.det(v[:, 1:] - v[:, :1]) / 6.0
