"""BSD — Balanced Score Distillation (Huang, Sun, Wang et al., "PlacidDreamer: Advancing Harmony in Text-to-3D
Generation", ACM MM 2024, arXiv 2407.13976; docs/losses.md).

Two objectives, balanced as a two-task min-norm (MGDA) problem per sample. One t per batch and one eps per sample,
x_t = a_t·x + s_t·ξ, ξ = eps + offset·N(0,1) per channel:

    g_c = λ_c·(e_y − e_0)                                     classifier objective
    g_s = e_0                                                 smoothing objective (no −eps)
    α   = clip(⟨g_s − g_c, g_s⟩ / ‖g_s − g_c‖², 0, 1)
    d   = α·g_c + (1 − α)·g_s                                 the minimum-norm point of the segment [g_s, g_c]
    g   = λ_g·a_t·d

- e_0 is the prediction with the smoothing prompt: in the reference pipeline the "unconditional" branch is the
  NEGATIVE prompt (``smoothing_prompt = "negative"``, ``negative_prompt``); ``"empty"`` uses the empty prompt.
- λ_c = 15: the reference ``train_step_BSD`` hard-codes 15 and ignores its ``guidance_ratio`` argument (whose CLI
  default is 18); here ``lambda_c`` is a real parameter.
- ``auto = True`` is the reference ``train_step_BSD_auto``: g_c = dC, g_s = 1.25·(e_0 − ξ) and the weight
  0.02·‖e_0 − ξ‖·s_t instead of a_t (norm per sample; the reference takes it over the batch, equal for B = 1);
  ``lambda_c`` is not used there.
- The weight is BSD's own, so the inherited ``weighting`` and ``guidance_scale`` are not used.
- With Perp-Neg, e_y is its conditional prediction (``ScoreCore.eps_guided``), taken relative to the smoothing
  prediction e_0, so g_c = λ_c·(dC + Σ_i w_i·perp(e_neg_i − e_0, dC)).
- Defaults follow the ISM schedule of the reference: t ∈ [0.02, 0.5] grown from 0.98 over 1500 steps, λ_g = 0.1,
  offset noise 0.1.

Invariants: α ∈ [0, 1]; ⟨d, g_c⟩ ≥ ‖d‖² and ⟨d, g_s⟩ ≥ ‖d‖²; ‖d‖ ≤ min(‖g_c‖, ‖g_s‖); g_c = g_s ⇒ d = g_c.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, bdot, surrogate_loss
from dreamgen.registry import register

SMOOTHING_PROMPTS = ("negative", "empty")


@dataclass
class BSDConfig(LossConfig):
    name: str = "bsd"
    t_min: Any = 0.02
    t_max: Any = field(default_factory=lambda: [0, 0.98, 0.5, 1500])
    per_sample_t: bool = False
    lambda_c: float = 15.0  # λ_c, scale of the classifier objective
    lambda_guidance: float = 0.1  # λ_g
    negative_prompt: str = "unrealistic, blurry, low quality."
    smoothing_prompt: str = "negative"  # which prompt gives e_0: "negative" (reference) or "empty"
    offset_noise: float = 0.1
    auto: bool = False
    auto_smoothing_scale: float = 1.25
    auto_weight_scale: float = 0.02


def min_norm_combination(g_c: Tensor, g_s: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the minimum-norm point d = α·g_c + (1−α)·g_s of the segment, and α ([B,1,...,1])."""
    diff = g_s - g_c
    alpha = bdot(diff, g_s) / bdot(diff, diff).clamp_min(torch.finfo(diff.dtype).tiny)
    alpha = alpha.clamp(0.0, 1.0)
    return alpha * g_c + (1 - alpha) * g_s, alpha


@register("loss", "bsd", config=BSDConfig,
          summary="Balanced Score Distillation: min-norm point between λ_c·dC and e_0, weight a_t",
          paper="PlacidDreamer (Huang et al., ACM MM 2024)", state="none", nfe=2)
class BSD(DistillationLoss):
    def __init__(self, cfg: BSDConfig, guidance):
        if cfg.smoothing_prompt not in SMOOTHING_PROMPTS:
            raise ConfigError(f"unknown smoothing_prompt {cfg.smoothing_prompt!r}; "
                              f"valid: {', '.join(SMOOTHING_PROMPTS)}")
        super().__init__(cfg, guidance)

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg = inp.x, self.core, self.cfg
        n = x.shape[0]
        t = core.sample_t(n, inp.step, inp.total_steps)
        xi = core.noise(x, cfg.offset_noise)
        x_t = core.add_noise(x.detach(), xi, t)
        smooth = core.text_embedding(cfg.negative_prompt, n) if cfg.smoothing_prompt == "negative" else inp.uncond
        e_y, e_0, _ = core.eps_guided(x_t, t, inp.cond, smooth, inp.perp_neg)

        a_t, s_t = core.alpha_sigma(t, x)
        if cfg.auto:
            g_c, g_s = e_y - e_0, cfg.auto_smoothing_scale * (e_0 - xi)
            w = cfg.auto_weight_scale * bdot(e_0 - xi, e_0 - xi).sqrt() * s_t
        else:
            g_c, g_s = cfg.lambda_c * (e_y - e_0), e_0
            w = a_t
        d, alpha = min_norm_combination(g_c, g_s)

        g = cfg.lambda_guidance * w * d
        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "alpha": alpha.mean().item(),
                                 "grad_norm": g.norm().item() / n})
