"""Volume renderer for density fields (NeRF stage).

Rays are cut to the sphere of the geometry's radius and sampled uniformly (``num_samples`` bins, jittered in
training). Compositing is nerfacc's ``render_weight_from_density`` / ``accumulate_along_rays`` in their batched
``[n_rays, n_samples]`` form, which is plain torch and runs on CPU and GPU alike.

Empty-space skipping (``occupancy_grid``) has two implementations behind the same switch:
- CUDA tensors with ``occupancy_backend: auto``: nerfacc's ``OccGridEstimator`` (ray marching with per-ray sample
  counts, packed compositing; its CUDA extension is JIT-built on first use, minutes on a fresh machine);
- otherwise (CPU, or ``occupancy_backend: torch`` on any device): :class:`EmptySpaceGrid`, a torch occupancy grid;
  samples in empty cells are not evaluated (σ = 0), the fixed samples per ray are kept.
Either way call :meth:`VolumeRenderer.update_occupancy` once per training step. A sample in an empty cell gets no
density and no gradient until the next update, so the two implementations (and none) need not give the same run.

nerfacc's packed functions, estimators and samplers need its CUDA extension (and try to JIT-build it when called on
CPU), so every call of them sits behind an ``is_cuda`` check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nerfacc
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dreamgen.cameras import Cameras, rays
from dreamgen.render.background import Background
from dreamgen.render.shading import (MODES_NEEDING_NORMALS, ShadingConfig, light_positions, mean_albedo,
                                     resolve_shading, shade, surface_points)
from dreamgen.schema import bounded


@dataclass
class RendererConfig(ShadingConfig):
    num_samples: int = bounded(48, ge=1)  # per ray, across the bounding sphere's diameter
    stratified: bool = True  # jitter each sample inside its bin (training only)
    # Empty-space skipping: nerfacc's estimator on CUDA, EmptySpaceGrid elsewhere ("auto"), or EmptySpaceGrid on
    # every device ("torch": the CPU's samples on a GPU too, and no extension to build).
    occupancy_grid: bool = False
    occupancy_backend: str = bounded("auto", choices=("auto", "torch"))
    occupancy_resolution: int = bounded(32, ge=2)
    occupancy_update_every: int = bounded(16, ge=1)
    occupancy_threshold: float = bounded(1e-3, ge=0.0)  # on σ·Δt (≈ a sample's alpha); nerfacc's 1e-2 thins fog
    occupancy_decay: float = bounded(0.95, ge=0.0, le=1.0)
    chunk: int = bounded(65536, ge=1)  # rays per chunk (bounds memory at eval; training batches are one chunk)
    # Training renders of more rays than this keep no activations of a chunk's samples and recompute them in
    # backward (torch.utils.checkpoint): the memory of one chunk instead of the whole image, for ~1.3x the render
    # compute. 0: never. The Stable Diffusion profile sets it so that 512-px renders fit (64 px: 4096 rays).
    checkpoint_rays: int = bounded(0, ge=0)


def ray_sphere_bounds(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """origins, dirs [R,3] (dirs unit) -> near [R], far [R], hit [R] of the sphere |x| ≤ radius.

    Misses get near = far = 0. Near is clamped at 0 for origins inside the sphere.
    """
    b = (origins * dirs).sum(-1)  # [R]
    c = origins.square().sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0)
    far = (-b + root).clamp_min(0)
    hit = hit & (far > near)
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


class EmptySpaceGrid(nn.Module):
    """Torch occupancy grid over ``[-radius, radius]^3`` for CPU empty-space skipping.

    Each update evaluates σ·Δt at one random point per cell and keeps ``max(decay · old, new)`` (nerfacc's rule).
    A cell counts as occupied if it or a neighbour exceeds the threshold: the one-cell dilation keeps thin surfaces
    that a single random probe per cell can miss. Before the first update everything is occupied.
    """

    def __init__(self, radius: float, resolution: int, threshold: float, decay: float):
        super().__init__()
        self.radius, self.resolution, self.threshold, self.decay = radius, resolution, threshold, decay
        self.register_buffer("occ", torch.zeros(resolution, resolution, resolution))  # [R,R,R] σ·Δt
        self.register_buffer("occupied_cells", torch.ones(resolution, resolution, resolution, dtype=torch.bool))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, density_fn, step_size: float) -> None:
        """density_fn: points [N,3] -> σ [N]."""
        res, dev = self.resolution, self.occ.device
        ijk = torch.stack(torch.meshgrid(*[torch.arange(res, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
        unit = (ijk + torch.rand(ijk.shape, device=dev)) / res
        points = (unit * 2.0 - 1.0) * self.radius
        new = (density_fn(points).float() * step_size).reshape(res, res, res)
        self.occ = new if int(self.n_updates) == 0 else torch.maximum(self.occ * self.decay, new)
        self.n_updates += 1
        above = (self.occ > self.threshold).float()[None, None]
        self.occupied_cells = F.max_pool3d(above, 3, stride=1, padding=1)[0, 0] > 0

    def occupied(self, points: Tensor) -> Tensor:
        """points [...,3] -> bool [...]; points outside the box are empty."""
        res = self.resolution
        unit = (points / self.radius + 1.0) * 0.5
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        ijk = (unit * res).long().clamp(0, res - 1)
        return inside & self.occupied_cells[ijk[..., 0], ijk[..., 1], ijk[..., 2]]


class VolumeRenderer(nn.Module):
    """``forward(cams, shading, train)`` -> images and regularisers of a density field (see :meth:`forward`)."""

    def __init__(self, geometry: nn.Module, background: Background, cfg: RendererConfig):
        super().__init__()
        self.geometry, self.background, self.cfg = geometry, background, cfg
        radius = float(geometry.radius)
        # nerfacc's estimator only builds buffers here; its CUDA kernels run in sampling/update, on CUDA only.
        self.estimator = (nerfacc.OccGridEstimator([-radius] * 3 + [radius] * 3, resolution=cfg.occupancy_resolution)
                          if cfg.occupancy_grid and cfg.occupancy_backend == "auto" else None)
        self.empty_space = (EmptySpaceGrid(radius, cfg.occupancy_resolution, cfg.occupancy_threshold,
                                           cfg.occupancy_decay) if cfg.occupancy_grid else None)
        # nerfacc's grid starts all-empty: march with it only after update_occupancy has filled it once.
        self.register_buffer("estimator_updates", torch.zeros((), dtype=torch.long))

    @property
    def step_size(self) -> float:
        """Sample spacing along a ray through the centre."""
        return 2.0 * float(self.geometry.radius) / self.cfg.num_samples

    def _use_nerfacc_estimator(self, t: Tensor) -> bool:
        return self.estimator is not None and t.is_cuda and int(self.estimator_updates) > 0

    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        """Call once per training step; refreshes the occupancy grid every ``occupancy_update_every`` steps."""
        if not self.cfg.occupancy_grid:
            return
        every, dt = self.cfg.occupancy_update_every, self.step_size
        if self.estimator is not None and self.estimator.occs.is_cuda:
            self.estimator_updates += int(step % every == 0)
            self.estimator.update_every_n_steps(
                step, occ_eval_fn=lambda x: self.geometry.density(x)[:, None] * dt,
                occ_thre=self.cfg.occupancy_threshold, ema_decay=self.cfg.occupancy_decay, n=every)
        elif step % every == 0:
            self.empty_space.update(self.geometry.density, dt)

    def forward(self, cams: Cameras, shading: str = "random", train: bool = True, step: int = 0) -> dict:
        """Render ``cams``.

        shading: ``random`` (training draw at the run's ``step``; ``lambertian`` when not training) or one of
        ``albedo | lambertian | textureless | normal``.
        Returns rgb [B,H,W,3] (over the background), opacity [B,H,W,1], depth [B,H,W,1] (Σ w·t, not divided by
        opacity), points [B,H,W,3] (the expected surface point, see :func:`surface_points`), normal [B,H,W,3] (Σ w·n; zeros in albedo mode), orient_loss (mean over rays of
        Σ stopgrad(w)·max(0, n·d)², 0 without normals), sparsity_loss (mean √(opacity² + 0.01)),
        opacity_loss (mean binary entropy of the opacity, pushes pixels to 0 or 1), shading (the mode used).
        """
        c = self.cfg
        mode = resolve_shading(shading, train, c, step)
        origins, dirs = rays(cams)  # [B,H,W,3]
        B, H, W = len(cams), cams.height, cams.width
        light_pos = light_positions(cams.c2w[:, :3, 3], c, train)  # [B,3]
        light_per_ray = light_pos[:, None, None, :].expand(B, H, W, 3).reshape(-1, 3)

        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        render = self._render_rays
        if train and 0 < c.checkpoint_rays < o.shape[0] and torch.is_grad_enabled():
            render = functools.partial(checkpoint, self._render_rays, use_reentrant=False)  # RNG state is replayed
        parts = [render(o[i:i + c.chunk], d[i:i + c.chunk], light_per_ray[i:i + c.chunk], mode, train)
                 for i in range(0, o.shape[0], c.chunk)]
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

        opacity = out["opacity"].reshape(B, H, W, 1)
        depth = out["depth"].reshape(B, H, W, 1)
        bg = self.background(dirs, train=train)  # [B,H,W,3]
        rgb = out["rgb"].reshape(B, H, W, 3)
        if "albedo" in out:  # textureless in the object's mean albedo: Σ w·(c·light) = c·Σ w·light, c per image
            tint = mean_albedo(out["albedo"].reshape(B, -1, 3).sum(1), opacity.reshape(B, -1, 1).sum(1))
            rgb = rgb * tint[:, None, None, :]
        rgb = rgb + (1.0 - opacity) * bg
        eps = 1e-5
        op = opacity.clamp(eps, 1.0 - eps)
        return {
            "rgb": rgb,
            "opacity": opacity,
            "depth": depth,
            "points": surface_points(origins, dirs, depth, opacity),
            "normal": out["normal"].reshape(B, H, W, 3),
            "orient_loss": out["orient"].mean(),
            "sparsity_loss": (opacity.square() + 0.01).sqrt().mean(),
            "opacity_loss": -(op * op.log() + (1 - op) * (1 - op).log()).mean(),
            "shading": mode,
        }

    def _tinted(self, mode: str) -> bool:
        """Textureless in the object's mean albedo: the rays also composite their albedo, for the image's tint."""
        return mode == "textureless" and self.cfg.textureless_albedo == "mean"

    def _shade_samples(self, points: Tensor, dirs: Tensor, light_pos: Tensor, mode: str
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Flat samples points, ray dirs, light positions [M,3] -> σ [M], colour [M,3], normal [M,3], orient [M],
        albedo [M,3]."""
        need_normals = mode in MODES_NEEDING_NORMALS
        f = self.geometry(points, with_normal=need_normals)
        normal = f["normal"] if need_normals else torch.zeros_like(points)
        light_dir = F.normalize(light_pos - points, dim=-1) if need_normals else None
        colour = shade(f["albedo"], normal if need_normals else None, light_dir, mode, self.cfg.ambient,
                       self.cfg.diffuse)
        orient = (normal * dirs).sum(-1).clamp_min(0.0).square()  # normals facing away from the camera
        return f["density"], colour, normal, orient, f["albedo"]

    def _render_rays(self, o: Tensor, d: Tensor, light_pos: Tensor, mode: str, train: bool) -> dict[str, Tensor]:
        """o, d, light_pos [R,3] -> rgb [R,3] (no background), opacity [R,1], depth [R,1], normal [R,3], orient [R]."""
        near, far, hit = ray_sphere_bounds(o, d, float(self.geometry.radius))
        if self._use_nerfacc_estimator(o):
            return self._render_rays_nerfacc(o, d, light_pos, mode, train, near, far)

        R, S = o.shape[0], self.cfg.num_samples
        u = torch.linspace(0.0, 1.0, S + 1, dtype=o.dtype, device=o.device)
        edges = near[:, None] + (far - near)[:, None] * u  # [R,S+1]
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]  # [R,S]
        jitter = torch.rand_like(t_starts) if (train and self.cfg.stratified) else torch.full_like(t_starts, 0.5)
        t = t_starts + (t_ends - t_starts) * jitter  # [R,S] sample positions
        points = o[:, None] + d[:, None] * t[..., None]  # [R,S,3]

        valid = hit[:, None].expand(R, S)
        if self.empty_space is not None:
            valid = valid & self.empty_space.occupied(points)
        flat = valid.reshape(-1).nonzero().squeeze(-1)  # [M] sample ids
        ray_of = flat // S
        sigma_m, colour_m, normal_m, orient_m, albedo_m = self._shade_samples(
            points.reshape(-1, 3)[flat], d[ray_of], light_pos[ray_of], mode)
        # Scatter back to [R,S]; skipped samples keep σ = 0 and contribute nothing.
        sigmas = _scatter_rows(sigma_m[:, None], flat, R * S).reshape(R, S)
        colour = _scatter_rows(colour_m, flat, R * S).reshape(R, S, 3)
        normal = _scatter_rows(normal_m, flat, R * S).reshape(R, S, 3)
        orient = _scatter_rows(orient_m[:, None], flat, R * S).reshape(R, S)

        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)  # [R,S]
        out = {
            "rgb": nerfacc.accumulate_along_rays(weights, colour),
            "opacity": nerfacc.accumulate_along_rays(weights, None),
            "depth": nerfacc.accumulate_along_rays(weights, t[..., None]),
            "normal": nerfacc.accumulate_along_rays(weights, normal),
            "orient": (weights.detach() * orient).sum(-1),
        }
        if self._tinted(mode):
            albedo = _scatter_rows(albedo_m, flat, R * S).reshape(R, S, 3)
            out["albedo"] = nerfacc.accumulate_along_rays(weights, albedo)
        return out

    def _render_rays_nerfacc(self, o: Tensor, d: Tensor, light_pos: Tensor, mode: str, train: bool,
                             near: Tensor, far: Tensor) -> dict[str, Tensor]:
        """CUDA only: nerfacc OccGridEstimator marching + packed compositing (same outputs as the batched path)."""
        R = o.shape[0]

        def sigma_fn(t0: Tensor, t1: Tensor, ray_idx: Tensor) -> Tensor:
            return self.geometry.density(o[ray_idx] + d[ray_idx] * ((t0 + t1) * 0.5)[:, None])

        ray_idx, t_starts, t_ends = self.estimator.sampling(
            o, d, sigma_fn=sigma_fn, t_min=near, t_max=far, render_step_size=self.step_size,
            stratified=train and self.cfg.stratified, alpha_thre=0.0)
        t = (t_starts + t_ends) * 0.5  # [M]
        sigmas, colour, normal, orient, albedo = self._shade_samples(
            o[ray_idx] + d[ray_idx] * t[:, None], d[ray_idx], light_pos[ray_idx], mode)
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_idx, n_rays=R)

        def acc(values: Tensor | None) -> Tensor:
            return nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_idx, n_rays=R)

        out = {
            "rgb": acc(colour),
            "opacity": acc(None),
            "depth": acc(t[:, None]),
            "normal": acc(normal),
            "orient": nerfacc.accumulate_along_rays(weights.detach(), orient[:, None], ray_indices=ray_idx,
                                                    n_rays=R)[:, 0],
        }
        if self._tinted(mode):
            out["albedo"] = acc(albedo)
        return out


def _scatter_rows(values: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """values [M,C] placed at ``rows`` of a zero [n_rows,C] tensor (differentiable in values)."""
    if values.shape[0] == n_rows:  # nothing skipped: rows is arange
        return values
    return values.new_zeros(n_rows, values.shape[1]).index_put((rows,), values)
