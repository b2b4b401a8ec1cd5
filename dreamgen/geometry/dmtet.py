"""DMTet: the fine-stage geometry of a coarse-to-fine run (Magic3D; Shen et al. 2021).

A signed distance value and a small deformation per vertex of a Kuhn tetrahedral grid (:mod:`dreamgen.geometry.tets`)
spanning a bounding box; differentiable marching tetrahedra turns them into a triangle mesh each step. Convention:
``sdf < 0`` inside. Vertex positions are ``grid + deformation_scale · cell · tanh(deform)``. A tetrahedron's volume is
affine in each of its vertices, so over all offsets of at most ``s`` cells per axis it is smallest at a corner of the
offset box; the 2¹² corners give a worst case ∝ 1 − 6s (``tests/test_dmtet.py``), so ``s < 1/6`` keeps every
tetrahedron positively oriented and the winding from the lookup table consistent.

Colour comes from a texture field shaped like the NeRF's albedo head (hash grid over ``[-radius, radius]^3`` → MLP →
sigmoid), so :meth:`DMTetGeometry.from_nerf` can copy the coarse stage's weights when the architectures match.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.geometry.hashgrid import HashGridConfig, field_mlp, make_hash_grid
from dreamgen.geometry.isosurface import THRESHOLD_RULES, auto_threshold, density_grid
from dreamgen.geometry.tets import TET_EDGES, kuhn_grid, to_bbox, unique_edges
from dreamgen.registry import register
from dreamgen.schema import bounded

log = logging.getLogger("dreamgen")

TEXTURE_INITS = ("auto", "copy", "distill")


@dataclass
class DMTetConfig:
    name: str = "dmtet"
    radius: float = bounded(1.0, gt=0.0)  # scene bound: the texture field's box, and the tet box until a hand-off
    # Cubes per axis of the tet grid (6·res³ tetrahedra). 32 ≈ one cell per 1–2 pixels of a 64-px render once the
    # hand-off has fitted the box to the object; raise it with the render resolution (64–128 on a GPU).
    grid_resolution: int = bounded(32, ge=2)
    # Max per-axis vertex offset in cells; < 1/6 keeps every tetrahedron positively oriented.
    deformation_scale: float = bounded(0.15, ge=0.0, lt=1.0 / 6.0)
    init_radius: float = bounded(0.5, gt=0.0)  # the SDF of a sphere of this radius when not handed off from a NeRF
    # The texture field (hash grid → MLP → sigmoid, as the NeRF's albedo head). None: in a run, the coarse NeRF's
    # (so the hand-off copies its albedo weights); standalone, the defaults (HashGridConfig(), 64, 1).
    grid: HashGridConfig | None = None
    mlp_width: int | None = bounded(None, ge=1, nullable=True)
    mlp_layers: int | None = bounded(None, ge=0, nullable=True)
    # Hand-off from the coarse NeRF (from_nerf):
    # density iso-level; None = automatic by threshold_rule (as mesh export)
    sdf_threshold: float | None = bounded(None, gt=0.0, nullable=True)
    threshold_rule: str = bounded("mean_occupied", choices=THRESHOLD_RULES)
    handoff_resolution: int = bounded(64, ge=8)  # density lattice over [-radius, radius]^3 for threshold and bbox
    bbox_margin: float = bounded(0.1, ge=0.0)  # fraction of the surface's extent added per side (+ 2 lattice cells)
    # auto: copy the NeRF's albedo net when the architectures match, else distill
    texture_init: str = bounded("auto", choices=TEXTURE_INITS)
    # Distillation (texture_init=distill, or auto with mismatched architectures): ~3.5 s on one CPU thread with the
    # default grid; mean albedo error near the surface ~0.015 (a copy is exact and takes no time).
    distill_steps: int = bounded(200, ge=0)
    distill_lr: float = bounded(0.03, gt=0.0)  # hash tables; the MLP gets a tenth
    distill_points: int = bounded(2048, ge=1)  # per step


# ---- marching tetrahedra --------------------------------------------------------------------------------------------
def _triangle_table() -> tuple[Tensor, Tensor]:
    """Lookup table for marching tetrahedra, derived from a positively oriented reference tetrahedron.

    Case = Σ 2^i over inside vertices i. Returns table [16,6] (local edge ids of up to two triangles, −1 padded) and
    counts [16]. Each triangle is wound so that its normal points from the inside vertices to the outside ones; an
    orientation-preserving affine map and the crossing positions along the edges do not change that, so the winding
    holds for every positively oriented tetrahedron.
    """
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    edge_id = {pair: e for e, pair in enumerate(TET_EDGES)}
    table = torch.full((16, 6), -1, dtype=torch.long)
    counts = torch.zeros(16, dtype=torch.long)
    for case in range(1, 15):
        inside = [v for v in range(4) if case >> v & 1]
        outside = [v for v in range(4) if not case >> v & 1]
        if len(inside) == 2:  # a quad: walk its edges in cycle order, split along one diagonal
            (a, b), (c, d) = inside, outside
            ring = [edge_id[tuple(sorted(p))] for p in ((a, c), (a, d), (b, d), (b, c))]
            tris = [ring[:3], [ring[0], ring[2], ring[3]]]
        else:
            tris = [[edge_id[(a, b)] for a, b in TET_EDGES if (a in inside) != (b in inside)]]
        direction = ref[outside].mean(0) - ref[inside].mean(0)
        flat = []
        for tri in tris:
            mid = torch.stack([ref[list(TET_EDGES[e])].mean(0) for e in tri])  # [3,3]
            if torch.dot(torch.linalg.cross(mid[1] - mid[0], mid[2] - mid[0]), direction) < 0:
                tri = [tri[0], tri[2], tri[1]]
            flat += tri
        table[case, : len(flat)] = torch.tensor(flat)
        counts[case] = len(tris)
    return table, counts


_TRI_TABLE, _TRI_COUNT = _triangle_table()


def marching_tets(pos: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable marching tetrahedra.

    pos [V,3], sdf [V] (< 0 inside), tets [T,4] positively oriented -> verts [Nv,3], faces [Nf,3] long.
    One vertex per crossed grid edge (shared by all tetrahedra around it, so the mesh is closed wherever the surface
    stays inside the grid), at the zero of the linear interpolation of the sdf; verts are differentiable in pos and
    sdf. Faces are wound counter-clockwise seen from outside (normals point outward).
    """
    inside = sdf < 0  # [V]
    occ = inside[tets]  # [T,4]
    n_in = occ.sum(-1)
    crossed = (n_in > 0) & (n_in < 4)
    tets = tets[crossed]  # [Tc,4] only tetrahedra the surface passes through
    if tets.shape[0] == 0:
        return pos[:0], torch.zeros(0, 3, dtype=torch.long, device=pos.device)  # empty, still on the graph
    edges, tet_edges = unique_edges(tets)  # [E,2], [Tc,6]
    cut = inside[edges[:, 0]] != inside[edges[:, 1]]  # [E]
    a, b = edges[cut, 0], edges[cut, 1]
    sa, sb = sdf[a], sdf[b]
    t = (sa / (sa - sb))[:, None]  # opposite signs, so the denominator is never 0
    verts = pos[a] + t * (pos[b] - pos[a])  # [Nv,3]
    vert_of_edge = torch.cumsum(cut, 0) - 1  # [E] (−1 where the edge is not cut; never referenced)

    weights = torch.tensor([1, 2, 4, 8], device=pos.device)
    case = (occ[crossed].long() * weights).sum(-1)  # [Tc]
    table, count = _TRI_TABLE.to(pos.device)[case], _TRI_COUNT.to(pos.device)[case]  # [Tc,6], [Tc]
    first = tet_edges.gather(1, table[:, :3])  # [Tc,3] global edge ids
    two = count == 2
    second = tet_edges[two].gather(1, table[two, 3:])
    faces = vert_of_edge[torch.cat([first, second])]
    return verts, faces


# ---- the geometry ---------------------------------------------------------------------------------------------------
@register("geometry", "dmtet", config=DMTetConfig, field="surface",
          summary="deformable tetrahedral grid SDF + hash-grid texture, meshed by marching tets (fine stage)")
class DMTetGeometry(nn.Module):
    def __init__(self, cfg: DMTetConfig, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg = dataclasses.replace(cfg, grid=cfg.grid or HashGridConfig(), mlp_width=cfg.mlp_width or 64,
                                             mlp_layers=1 if cfg.mlp_layers is None else cfg.mlp_layers)
        grid = kuhn_grid(cfg.grid_resolution)
        # The lattice is rebuilt from the config, so it is not checkpointed; the bbox (set by a hand-off) is.
        self.register_buffer("unit_verts", grid.verts, persistent=False)  # [V,3] in [-1,1]^3
        self.register_buffer("tets", grid.tets, persistent=False)  # [T,4]
        r = float(cfg.radius)
        self.register_buffer("bbox", torch.tensor([[-r] * 3, [r] * 3]))  # [2,3]
        self.sdf = nn.Parameter(self.unit_verts.norm(dim=-1) * r - cfg.init_radius)  # [V] a sphere
        self.deform = nn.Parameter(torch.zeros_like(self.unit_verts))  # [V,3] pre-tanh offsets
        self.encoding = make_hash_grid(cfg.grid, device)
        self.mlp = field_mlp(cfg.grid.output_dim, cfg.mlp_width, cfg.mlp_layers, 3)  # albedo logits
        self.handoff_threshold: float | None = None  # the coarse density iso-level, set by from_nerf
        self._frozen_surface: tuple | None = None  # (parameter versions, surface) while sdf and deform are frozen
        self.to(device)

    @property
    def radius(self) -> float:
        return float(self.cfg.radius)

    @property
    def cell_size(self) -> Tensor:
        """[3] edge lengths of a grid cube in world units."""
        return (self.bbox[1] - self.bbox[0]) / self.cfg.grid_resolution

    def vertex_positions(self) -> Tensor:
        """[V,3] deformed grid vertices in world space."""
        offset = self.cfg.deformation_scale * self.cell_size * torch.tanh(self.deform)
        return to_bbox(self.unit_verts, self.bbox) + offset

    def surface(self) -> tuple[Tensor, Tensor]:
        """Marching tets on the current SDF: verts [Nv,3] (differentiable in sdf and deform), faces [Nf,3] long,
        wound counter-clockwise seen from outside. A frozen surface (texture stage) is meshed once per change."""
        if self.sdf.requires_grad or self.deform.requires_grad:
            return marching_tets(self.vertex_positions(), self.sdf, self.tets)
        key = (self.sdf._version, self.deform._version, self.bbox._version, self.sdf.device, self.sdf.dtype)
        if self._frozen_surface is None or self._frozen_surface[0] != key:
            self._frozen_surface = (key, marching_tets(self.vertex_positions(), self.sdf, self.tets))
        return self._frozen_surface[1]

    def albedo(self, points: Tensor) -> Tensor:
        """points [N,3] -> albedo [N,3] in [0,1] (the texture field)."""
        unit = ((points / self.radius + 1.0) * 0.5).clamp(0.0, 1.0)
        return torch.sigmoid(self.mlp(self.encoding(unit)).to(points.dtype))

    def param_groups(self, lr: float, lr_net: float | None = None) -> list[dict]:
        """Adam groups: SDF + deformation and the texture tables at ``lr``, the texture MLP at ``lr_net``."""
        return [
            {"name": "geometry.sdf", "params": [self.sdf, self.deform], "lr": lr},
            {"name": "geometry.grid", "params": list(self.encoding.parameters()), "lr": lr},
            {"name": "geometry.net", "params": list(self.mlp.parameters()), "lr": lr if lr_net is None else lr_net},
        ]

    def texture_optimizer(self, lr: float) -> torch.optim.Adam:
        """Adam over the texture alone, for fitting it to a teacher: the tables at ``lr``, the MLP at a tenth."""
        return torch.optim.Adam([{"params": self.encoding.parameters(), "lr": lr},
                                 {"params": self.mlp.parameters(), "lr": lr * 0.1}], betas=(0.9, 0.99), eps=1e-15)

    # ---- hand-off from the coarse stage -----------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_nerf(cls, nerf: nn.Module, cfg: DMTetConfig) -> "DMTetGeometry":
        """The fine stage's starting point from a coarse density field (``density``, ``albedo``, ``radius``).

        - iso-level τ: ``cfg.sdf_threshold`` or the export's automatic rule on a ``handoff_resolution`` lattice;
        - bounding box: the lattice points with σ > τ, widened by ``bbox_margin`` of their extent + 2 lattice cells;
        - SDF at the tet vertices: (τ − σ)/τ, so marching tets reproduces the coarse isosurface up to the linear
          interpolation along grid edges;
        - texture: a copy of the NeRF's hash grid and MLP (its albedo rows) when grid config, MLP shape and radius
          match, else distilled from the NeRF's albedo near the surface (``texture_init``).
        """
        device = next(nerf.parameters()).device
        geo = cls(cfg, device=device)
        grid, spacing, origin = density_grid(nerf, cfg.handoff_resolution)
        tau = (float(cfg.sdf_threshold) if cfg.sdf_threshold is not None
               else auto_threshold(grid, cfg.threshold_rule))
        occupied = np.argwhere(grid > tau)
        if len(occupied) == 0:
            raise DreamgenError(f"cannot hand off to DMTet: no coarse density above the threshold {tau:g}")
        lo, hi = origin + occupied.min(0) * spacing, origin + occupied.max(0) * spacing
        pad = cfg.bbox_margin * (hi - lo) + 2.0 * spacing
        r = geo.radius
        bbox = torch.tensor(np.stack([np.maximum(lo - pad, -r), np.minimum(hi + pad, r)]), dtype=torch.float32)
        geo.bbox.copy_(bbox)
        pos = geo.vertex_positions()
        sigma = torch.cat([nerf.density(p) for p in pos.split(65536)])
        geo.sdf.copy_((tau - sigma) / tau)
        geo.handoff_threshold = tau

        mode = cfg.texture_init
        if mode == "auto":
            mode = "copy" if geo._texture_matches(nerf) else "distill"
        if mode == "copy":
            if not geo._texture_matches(nerf):
                raise ConfigError("geometry.texture_init=copy needs the NeRF's grid config, mlp_width, mlp_layers "
                                  "and radius")
            geo._copy_texture(nerf)
        else:
            with torch.enable_grad():
                geo.distill_texture(nerf)
        return geo

    def _texture_matches(self, nerf: nn.Module) -> bool:
        ncfg = getattr(nerf, "cfg", None)
        return (ncfg is not None and hasattr(nerf, "encoding") and hasattr(nerf, "mlp")
                and ncfg.grid == self.cfg.grid and ncfg.mlp_width == self.cfg.mlp_width
                and ncfg.mlp_layers == self.cfg.mlp_layers and float(ncfg.radius) == self.radius
                and type(nerf.encoding) is type(self.encoding))

    def _copy_texture(self, nerf: nn.Module) -> None:
        """The NeRF's encoding and MLP, keeping the albedo rows (1:4) of its output layer: the same albedo field."""
        self.encoding.load_state_dict(nerf.encoding.state_dict())
        for mine, theirs in zip(self.mlp[:-1], nerf.mlp[:-1]):
            mine.load_state_dict(theirs.state_dict())
        self.mlp[-1].weight.copy_(nerf.mlp[-1].weight[1:4])
        self.mlp[-1].bias.copy_(nerf.mlp[-1].bias[1:4])

    def surface_samples(self, n: int, jitter_cells: float = 1.0) -> Tensor:
        """[n,3] points uniformly on the current mesh (area-weighted), jittered by N(0, (jitter_cells·cell)²)."""
        with torch.no_grad():
            verts, faces = self.surface()
            if faces.shape[0] == 0:
                raise DreamgenError("DMTet surface is empty: no zero crossing of the SDF inside its grid")
            tri = verts[faces]  # [F,3,3]
            area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
            face = torch.multinomial(area, n, replacement=True)
            u, v = torch.rand(2, n, 1, device=verts.device)
            flip = (u + v) > 1  # fold the unit square onto the triangle
            u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
            t = tri[face]
            p = t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])
            return p + jitter_cells * self.cell_size.min() * torch.randn_like(p)

    def distill_texture(self, teacher: nn.Module) -> list[float]:
        """Fit the texture field to ``teacher.albedo`` near the current surface (MSE, Adam). Returns the losses."""
        cfg = self.cfg
        if cfg.distill_steps <= 0:
            return []
        opt = self.texture_optimizer(cfg.distill_lr)
        start, losses = time.perf_counter(), []
        pool = self.surface_samples(8 * cfg.distill_points)
        with torch.no_grad():
            target = teacher.albedo(pool)
        for _ in range(cfg.distill_steps):
            idx = torch.randint(0, pool.shape[0], (cfg.distill_points,), device=pool.device)
            loss = (self.albedo(pool[idx]) - target[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        log.info("distilled the DMTet texture in %.1fs: mse %.4g -> %.4g", time.perf_counter() - start,
                 losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
        return losses
