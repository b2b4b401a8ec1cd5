"""Baking what one renderer shows into another's texture: the coarse NeRF's look carried onto the DMTet surface.

The surface stage starts from the NeRF's albedo *field* evaluated on the new surface (a copy or a distillation,
:meth:`DMTetGeometry.from_nerf`). That misses what the NeRF shows only through its half-transparent volume — a
door painted as a dark haze in front of the wall, a tv's screen (docs/janus.md, "The surface stage and the door").
Baking fits the surface's texture to the NeRF's *rendered* albedo instead: both are rendered from the same cameras
in albedo shading, the background taken out of each pixel, and the texture trained on the squared difference where
both cover the pixel.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn

from dreamgen.cameras import Cameras, rays

log = logging.getLogger(__name__)


def rendered_albedo(renderer: nn.Module, cams: Cameras, min_opacity: float = 0.5) -> tuple[Tensor, Tensor]:
    """(albedo [B,H,W,3], mask [B,H,W] bool): the renderer's albedo image with its background removed
    (rgb = albedo·opacity + (1 − opacity)·background, solved for albedo), where the opacity exceeds
    ``min_opacity``."""
    out = renderer(cams, shading="albedo", train=False)
    opacity = out["opacity"]  # [B,H,W,1]
    background = renderer.background(rays(cams)[1], train=False)
    albedo = (out["rgb"] - (1.0 - opacity) * background) / opacity.clamp(min=min_opacity)
    return albedo, opacity[..., 0] > min_opacity


def bake_texture(source: nn.Module, target: nn.Module, views: list[Cameras], steps: int, lr: float) -> list[float]:
    """Fit ``target.geometry``'s texture (its ``texture_optimizer(lr)``) to ``source``'s albedo renders of ``views``
    (each rendered once) on the masked mean squared error, ``steps`` steps cycling through the views. Returns the
    losses."""
    if steps <= 0 or not views:
        return []
    start = time.perf_counter()
    with torch.no_grad():
        targets = [rendered_albedo(source, cams) for cams in views]
    geometry = target.geometry
    opt = geometry.texture_optimizer(lr)
    losses = []
    for step in range(steps):
        k = step % len(views)
        albedo, mask = rendered_albedo(target, views[k])
        both = mask & targets[k][1]  # [B,H,W]
        if not both.any():
            continue
        loss = (albedo[both] - targets[k][0][both]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    geometry.zero_grad(set_to_none=True)  # the surface's own tables got gradients too; none may reach its training
    log.info("baked the NeRF's renders into the surface texture in %.1f s: mse %.4g -> %.4g",
             time.perf_counter() - start, losses[0] if losses else float("nan"),
             losses[-1] if losses else float("nan"))
    return losses
