"""Batched sphere-tracing renderer of the procedural world (CPU-fast, used for the prior's data and for evaluation).

Rays come from :func:`dreamgen.cameras.rays`. Each ray is clipped to the bounding ball |p| < BOUND and marched with
the object's SDF; rays that converge (|sdf| < eps) or leave the ball are dropped from the working set every few steps,
so the cost is proportional to the rays still marching. Normals are tetrahedral finite differences of the SDF.
Shading is Lambertian plus ambient with one directional light, composited over a solid background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamgen.cameras import Cameras, rays
from dreamgen.world.objects import BOUND, VARIANTS, albedo, check_shape, colour_rgb, sdf

# White: every world colour contrasts with it (none is white or light grey); the prior is trained with it.
DEFAULT_BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)
AMBIENT = 0.35
CAMERA_LIGHT_TILT = 0.6  # the "camera" light comes from the camera direction tilted up by atan(0.6) ≈ 31°

_TETRA = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


def sphere_trace(shape: str, origins: Tensor, dirs: Tensor, max_steps: int = 48, eps: float = 1e-3,
                 sdf_fn: Callable[[Tensor], Tensor] | None = None, compact_every: int = 4) -> tuple[Tensor, Tensor]:
    """origins, dirs: [R,3] (dirs unit) -> (t [R] distance to the surface along the ray, hit [R] bool).

    Finished rays (converged, or out of the bounding ball) are dropped every ``compact_every`` steps; in between
    they keep marching, which is harmless: a converged ray's steps are < eps and never cross the surface.
    """
    sdf_fn = sdf_fn or (lambda p: sdf(shape, p))
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins * origins).sum(-1) + BOUND * BOUND
    root = disc.clamp(min=0).sqrt()
    t_near, t_far = (-b - root).clamp(min=0), -b + root
    t_out = torch.zeros_like(b)
    hit = torch.zeros_like(b, dtype=torch.bool)
    idx = ((disc > 0) & (t_far > 0)).nonzero().squeeze(1)  # rays that cross the bounding ball
    # One [M,8] state tensor (origin, direction, t, t_far) so compaction is a single gather.
    state = torch.cat([origins[idx], dirs[idx], t_near[idx, None], t_far[idx, None]], dim=1)
    dist = torch.zeros(0, dtype=b.dtype, device=b.device)
    for step in range(max_steps):
        if idx.numel() == 0:
            break
        dist = sdf_fn(torch.addcmul(state[:, :3], state[:, 3:6], state[:, 6:7]))
        state[:, 6] += dist
        if step % compact_every == compact_every - 1 or step == max_steps - 1:
            done = dist < eps
            sel = done.nonzero().squeeze(1)
            hit[idx[sel]] = True
            t_out[idx[sel]] = state[sel, 6]
            keep = (~done & (state[:, 6] < state[:, 7])).nonzero().squeeze(1)
            state, idx, dist = state[keep], idx[keep], dist[keep]
    # Grazing rays converge slowly: accept the ones left close to the surface.
    close = (dist < 10 * eps).nonzero().squeeze(1)
    hit[idx[close]] = True
    t_out[idx[close]] = state[close, 6]
    return t_out, hit


def sdf_normals(sdf_fn: Callable[[Tensor], Tensor], p: Tensor, h: float = 2e-3) -> Tensor:
    """Unit normals from the SDF's gradient by tetrahedral differences (4 SDF evaluations). p: [N,3] -> [N,3]."""
    k = _TETRA.to(p)
    vals = sdf_fn((p[None] + h * k[:, None]).reshape(-1, 3)).reshape(4, -1)  # [4,N]
    return F.normalize((vals[..., None] * k[:, None]).sum(0), dim=-1)


def light_directions(cams: Cameras, light: str | Tensor) -> Tensor:
    """Unit directions towards the light, [B,3]. "camera": from the camera, tilted up so fronts and tops are lit;
    a tensor [3] or [B,3]: a fixed world direction towards the light."""
    if isinstance(light, str):
        if light != "camera":
            raise ValueError(f"unknown light {light!r}; use 'camera' or a direction tensor [3] or [B,3]")
        to_cam = F.normalize(cams.c2w[:, :3, 3], dim=-1)
        up = torch.tensor([0.0, 0.0, CAMERA_LIGHT_TILT], dtype=to_cam.dtype, device=to_cam.device)
        return F.normalize(to_cam + up, dim=-1)
    light = light.to(cams.c2w)
    return F.normalize(light.expand(len(cams), 3), dim=-1)


def render(shape: str, colour: str | Sequence[str] | Tensor, cams: Cameras,
           background: Sequence[float] = DEFAULT_BACKGROUND, light: str | Tensor = "camera", supersample: int = 1,
           max_steps: int = 48, ambient: float = AMBIENT,
           albedo_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
           sdf_fn: Callable[[Tensor], Tensor] | None = None, variant: str = "true") -> tuple[Tensor, Tensor, Tensor]:
    """Render one shape for B cameras, on the cameras' device.

    colour: one name, B names (one per camera) or RGB [3] / [B,3].
    supersample: s renders s·H × s·W pixels and box-filters them down (anti-aliasing).
    variant: ``true``, ``two_faced`` or ``faceless`` (:data:`dreamgen.world.objects.VARIANTS`), the object or one of
    its Janus references, geometry and paint alike.
    albedo_fn(p [N,3], base_rgb [N,3]) -> [N,3] replaces the shape's albedo;
    sdf_fn(p [N,3]) -> [N] replaces the shape's SDF (e.g. a scaled object; it must stay inside the bounding ball).

    Returns rgb [B,H,W,3] in [0,1] (composited over ``background``), mask [B,H,W] bool (pixel coverage ≥ 1/2) and
    depth [B,H,W] (mean ray distance to the surface over the covered subpixels, 0 on the background).
    """
    check_shape(shape)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    B, H, W, s = len(cams), cams.height, cams.width, int(supersample)
    dev, dt = cams.c2w.device, cams.c2w.dtype
    if isinstance(colour, (list, tuple)):
        if len(colour) != B:
            raise ValueError(f"got {len(colour)} colours for {B} cameras")
        base_cam = torch.stack([colour_rgb(c, 1, cams.c2w)[0] for c in colour])  # [B,3]
    else:
        base_cam = colour_rgb(colour, B, cams.c2w)  # [B,3]
    fine = replace(cams, height=H * s, width=W * s) if s > 1 else cams
    origins, dirs = rays(fine)  # [B,sH,sW,3]
    n_pix = H * s * W * s
    sdf_one = sdf_fn or (lambda p: sdf(shape, p, variant))
    t, hit = sphere_trace(shape, origins.reshape(-1, 3), dirs.reshape(-1, 3), max_steps=max_steps, sdf_fn=sdf_one)

    rgb = torch.tensor(list(background), dtype=dt, device=dev).expand(B * n_pix, 3).clone()
    hit_idx = hit.nonzero().squeeze(1)
    if hit_idx.numel():
        cam_of_ray = hit_idx // n_pix
        p = origins.reshape(-1, 3)[hit_idx] + t[hit_idx, None] * dirs.reshape(-1, 3)[hit_idx]
        base = base_cam[cam_of_ray]
        a = albedo_fn(p, base) if albedo_fn is not None else albedo(shape, base, p, variant)
        n = sdf_normals(sdf_one, p)
        lam = (n * light_directions(cams, light)[cam_of_ray]).sum(-1).clamp(min=0)
        rgb[hit_idx] = (a * (ambient + (1.0 - ambient) * lam[:, None])).clamp(0, 1)

    rgb = rgb.reshape(B, H * s, W * s, 3)
    cover = hit.to(dt).reshape(B, H * s, W * s)
    depth = torch.where(hit, t, torch.zeros_like(t)).reshape(B, H * s, W * s)
    if s > 1:
        rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
        depth_sum = F.avg_pool2d(depth[:, None], s)[:, 0]
        cover = F.avg_pool2d(cover[:, None], s)[:, 0]
        depth = torch.where(cover > 0, depth_sum / cover.clamp(min=1e-8), torch.zeros_like(depth_sum))
    return rgb.contiguous(), cover >= 0.5, depth
