"""GCS — Guided Consistency Sampling (Li, Hu, Zheng & Jiang, "Connecting Consistency Distillation to Score
Distillation for Text-to-3D Generation", ECCV 2024, arXiv 2407.13584; docs/losses.md).

Three timesteps t > s = t − Δ > e, with e ~ U[t − 2Δ, t − Δ − 10) and one t per batch. Every ε below is a prediction
of the frozen denoiser (no gradient); the points of the trajectory keep their linear dependence on x. With the
deterministic DDIM step DDIM(z: τ → τ'; ε) = a_τ'·(z − s_τ·ε)/a_τ + s_τ'·ε and x̂0(z, ε, τ) = (z − s_τ·ε)/a_τ:

    x_e    = a_e·x + s_e·ξ                              ξ: the injected noise (below)
    x_s    = DDIM(x_e: e → s; e_0(x_e, e))             unconditional inversion e → s → t
    x_t    = DDIM(x_s: s → t; e_0(x_s, s))
    ε_t    = E_ω(x_t, t)
    x_s|t  = DDIM(x_t: t → s; ε_t)                     one guided step back to s
    x_e|t  = DDIM(x_t: t → e; ε_t)                     the guided jump to e

    L_cc = w_cc·‖DDIM(x_t: t → e; e_0(x_t, t)) − sg(DDIM(x_s|t: s → e; e_0(x_s|t, s)))‖²/B    compact consistency
    L_gc = w_gc·‖sg(x̂0^ω) − x̂0^∅‖²/B,   x̂0^ω = x̂0(x_e|t, E_ω(x_e|t, e), e),  x̂0^∅ = x̂0(x_e, e_0(x_e, e), e)
    L_cp = w_cp·‖I − sg(I + D(x̂0^ω) − D(x̂0^∅))‖²/B                                           pixel constraint
    loss = λ_g·(L_cc + L_gc + L_cp)

I is the render (``LossInput.rgb``) and D the guidance's decoder (the VAE for Stable Diffusion, the identity-like
rescaling of the pixel-space embedded prior); D's output is resized to the render's resolution. Along e → s → t → e
the DDIM factors a_τ'/a_τ telescope to a_e, and x̂0^∅ = x + (s_e/a_e)·(ξ − e_0(x_e, e)), so the gradients are exact:

    ∂L_cc/∂x = 2·w_cc·a_e·(DDIM(x_t: t → e; e_0) − DDIM(x_s|t: s → e; e_0))/B
    ∂L_gc/∂x = 2·w_gc·(x̂0^∅ − x̂0^ω)/B,        ∂L_cp/∂I = 2·w_cp·(D(x̂0^∅) − D(x̂0^ω))/B

and the loss hands them to the surrogate (∂loss/∂x = g/B, ∂loss/∂I = g_I/B) instead of differentiating through the
DDIM chain. Without a render (``rgb`` None, e.g. the 2-D lab) L_cp is left out. The weighting w(t) is GCS's own
(a_e and 1 above): the inherited ``weighting`` is not used.

Defaults (``LMozart/ECCV2024-GCS-BEG``, ``configs/full_model/*.yaml`` and ``guidance/gcs_utils.py``): ω = 7.5,
w_cc = 1, w_gc = w_cp = 0.5, λ_g = 0.1, Δ from 100 to 80 over the 1500-step warmup, t ∈ [0.02, 0.5]·T with both
ends shifted up by 0.48·T at the start of the warmup (so [0.5, 0.98]), ξ drawn once and kept (``fix_noise``) with a
0.1 per-channel offset. The reference uses Perp-Neg (with LucidDreamer's weights); here Perp-Neg enters both E_ω
when the batch carries it (``prompts.perp_neg``, threestudio's weights). Its random horizontal flip is an
augmentation of the render, not of this loss. Cost: 7 NFE (the reference's 8 less its second e_0(x_t, t)) and, with
a render, 2 decodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import FixedNoise, LossConfig, surrogate_loss
from dreamgen.registry import register


@dataclass
class GCSConfig(LossConfig):
    name: str = "gcs"
    guidance_scale: float = 7.5
    t_min: Any = field(default_factory=lambda: [0, 0.5, 0.02, 1500])
    t_max: Any = field(default_factory=lambda: [0, 0.98, 0.5, 1500])
    per_sample_t: bool = False
    lambda_guidance: float = 0.1  # λ_g
    w_cc: float = 1.0  # compact consistency
    w_gc: float = 0.5  # conditional guidance
    w_cp: float = 0.5  # pixel constraint
    delta_t: int = 80  # Δ after the warmup
    delta_t_start: int = 100  # Δ at step 0
    warmup_steps: int = 1500
    end_margin: int = 10  # e < t − Δ − end_margin
    offset_noise: float = 0.1
    fixed_noise: bool = True  # draw ξ once and keep it (the reference's fix_noise)


@register("loss", "gcs", config=GCSConfig,
          summary="Guided Consistency Sampling: consistency + guidance + pixel losses along a DDIM-inverted path",
          paper="Connecting Consistency Distillation to Score Distillation (Li et al., ECCV 2024)",
          state="fixed noise ξ", nfe=7)
class GCS(DistillationLoss):
    def __init__(self, cfg: GCSConfig, guidance):
        super().__init__(cfg, guidance)
        self.noise_pixels = FixedNoise()
        self.noise_offset = FixedNoise()

    def interval(self, step: int) -> int:
        """Δ at this optimisation step: delta_t_start → delta_t over the warmup (rounded up, as the reference)."""
        cfg = self.cfg
        rate = 1.0 - min(step / max(cfg.warmup_steps, 1), 1.0)
        return cfg.delta_t + math.ceil(rate * (cfg.delta_t_start - cfg.delta_t))

    def timesteps(self, n: int, step: int, total_steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """(t, s, e), each [n] long: t ≥ Δ + 1, s = t − Δ, e ~ U[max(t − 2Δ, 0), max(t − Δ − margin, 1)), e ≥ 1."""
        delta, core = self.interval(step), self.core
        t = core.sample_t(n, step, total_steps).clamp(min=delta + 1)
        s = (t - delta).clamp(min=1)
        lo, hi = (t - 2 * delta).clamp(min=0), (t - delta - self.cfg.end_margin).clamp(min=1)
        u = torch.rand(n if self.cfg.per_sample_t else 1, device=t.device).expand(n)
        e = (lo + (u * (hi - lo).float()).long()).clamp(min=1)
        return t, s, e

    def noise(self, x: Tensor) -> Tensor:
        """ξ = eps + offset·N(0, 1) per channel (shared by the batch); drawn once and kept when ``fixed_noise``."""
        if not self.cfg.fixed_noise:
            return self.core.noise(x, self.cfg.offset_noise)
        offset = self.noise_offset((1, x.shape[1], *([1] * (x.dim() - 2))), x)
        return self.noise_pixels(tuple(x.shape), x) + self.cfg.offset_noise * offset

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg, b = inp.x, self.core, self.cfg, inp.x.shape[0]
        guided = dict(cond=inp.cond, uncond=inp.uncond, perp_neg=inp.perp_neg)
        t, s, e = self.timesteps(b, inp.step, inp.total_steps)
        xi = self.noise(x)

        x_e = core.add_noise(x.detach(), xi, e)
        e_0_e = core.eps(x_e, e, inp.uncond)
        x_s = core.ddim_step(x_e, e_0_e, e, s)
        x_t = core.ddim_step(x_s, core.eps(x_s, s, inp.uncond), s, t)
        e_cfg_t, _, e_0_t = core.eps_cfg(x_t, t, **guided)
        logs = {"t": t.float().mean().item(), "s": s.float().mean().item(), "e": e.float().mean().item()}

        g = torch.zeros_like(x)
        if cfg.w_cc:
            x_s_t = core.ddim_step(x_t, e_cfg_t, t, s)
            target = core.ddim_step(x_s_t, core.eps(x_s_t, s, inp.uncond), s, e)
            diff = core.ddim_step(x_t, e_0_t, t, e) - target
            a_e, _ = core.alpha_sigma(e, x)
            g = g + 2 * cfg.w_cc * a_e * diff
            logs["l_cc"] = cfg.w_cc * diff.pow(2).sum().item() / b

        loss_rgb = x.new_zeros(())
        if cfg.w_gc or cfg.w_cp:
            x_e_t = core.ddim_step(x_t, e_cfg_t, t, e)
            x0_cfg = core.x0_from_eps(x_e_t, core.eps_cfg(x_e_t, e, **guided)[0], e)
            x0_null = core.x0_from_eps(x_e, e_0_e, e)
            g = g + 2 * cfg.w_gc * (x0_null - x0_cfg)
            logs["l_gc"] = cfg.w_gc * (x0_null - x0_cfg).pow(2).sum().item() / b
            if cfg.w_cp and inp.rgb is not None:
                d_rgb = self.pixel_difference(x0_null, x0_cfg, inp.rgb.shape[1:3])
                loss_rgb = surrogate_loss(inp.rgb, cfg.lambda_guidance * 2 * cfg.w_cp * d_rgb)
                logs["l_cp"] = cfg.w_cp * d_rgb.pow(2).sum().item() / b

        g = cfg.lambda_guidance * g
        loss = cfg.weight * (surrogate_loss(x, g) + loss_rgb)
        logs["grad_norm"] = g.norm().item() / b
        return LossOutput(loss, logs)

    @torch.no_grad()
    def pixel_difference(self, x0_null: Tensor, x0_cfg: Tensor, size: tuple[int, int]) -> Tensor:
        """D(x̂0^∅) − D(x̂0^ω) [B,H,W,C] at the render's resolution (H, W)."""
        d = self.guidance.decode(x0_null) - self.guidance.decode(x0_cfg)  # [B,H',W',C]
        if tuple(d.shape[1:3]) != tuple(size):
            d = F.interpolate(d.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False,
                              antialias=True).permute(0, 2, 3, 1)
        return d
