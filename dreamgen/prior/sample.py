"""DDIM sampling with classifier-free guidance from the embedded prior (previews, evaluation)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from dreamgen.prior.model import ShapesPrior


@torch.no_grad()
def sample(model: ShapesPrior, prompts: list[str], steps: int = 50, guidance_scale: float = 3.0,
           generator: torch.Generator | None = None, camera: Tensor | None = None) -> Tensor:
    """prompts -> images [B,3,S,S] in [-1,1]; deterministic DDIM (η = 0), CFG ``v_0 + ω·(v_y − v_0)``.

    ``timestep_spacing="trailing"`` starts at t = T−1, where the cosine schedule's SNR is ≈ 0, so starting from pure
    noise matches training. ``generator`` draws the initial noise (on the model's device). ``camera``: features
    [B, camera_dim] (:meth:`ShapesPrior.camera_features`) given to the conditional and the unconditional rows alike,
    so CFG's direction stays the text; None samples text-only (the null camera).
    """
    dev = next(model.parameters()).device
    sched = DDIMScheduler.from_config(model.spec.scheduler, timestep_spacing="trailing", clip_sample=False,
                                      set_alpha_to_one=True)
    sched.set_timesteps(steps, device=dev)
    s = model.spec.image_size
    x = torch.randn(len(prompts), 3, s, s, generator=generator, device=dev)
    cond = model.encode_text(prompts)
    uncond = model.encode_text([""]).expand_as(cond)
    if camera is not None:
        cond, uncond = model.fuse_camera(cond, camera), model.fuse_camera(uncond, camera)
    for t in sched.timesteps:
        tt = t.expand(2 * len(prompts))
        v_y, v_0 = model(torch.cat([x, x]), tt, torch.cat([cond, uncond])).chunk(2)
        x = sched.step(v_0 + guidance_scale * (v_y - v_0), t, x).prev_sample
    return x.clamp(-1, 1)


def to_uint8(x: Tensor) -> Tensor:
    """[B,3,S,S] in [-1,1] -> uint8 [B,S,S,3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def grid(images: Tensor, ncol: int, pad: int = 1, fill: int = 128) -> Tensor:
    """uint8 [B,H,W,3] -> one uint8 [rows·(H+pad)+pad, ncol·(W+pad)+pad, 3] image, row-major."""
    b, h, w, _ = images.shape
    rows = -(-b // ncol)
    out = torch.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=torch.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out
