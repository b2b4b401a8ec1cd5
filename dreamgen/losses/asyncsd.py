"""Asynchronous Score Distillation (Ma, Wei, Zhang, Zhu, Lei & Zhang, "ScaleDreamer: Scalable Text-to-3D Synthesis
with Asynchronous Score Distillation", ECCV 2024, arXiv 2407.02040; docs/losses.md).

Update rule, one t and one eps ~ N(0, I) per sample, and a later timestep t+ for the target:

    t+  = t + ⌊U·r·(t − t_min)⌋,   U ~ U[0, 1),  r = ``plus_ratio``
    x_t = a_t·x + s_t·eps,   x_t+ = a_t+·x + s_t+·eps          (the SAME eps)
    g   = s_t²·(E_ω(x_t, t) − e_y(x_t+, t+))

The target is the conditional prediction one noise level later, so the fixed −eps of SDS is replaced by a
prediction of the same image: r = 0 gives the classifier form s_t²·(ω − 1)·dC. All three predictions come from one
batched denoiser call (3 NFE). With Perp-Neg, e_y is its conditional prediction at both timesteps, which needs e_0
and the negatives at x_t+ too: still one call, of 2·(2 + K) rows. Defaults of
``configs/single-prompt_benchmark/asd_sd_nerf.yaml``: ω = 7.5, t_min anneals 0.5 → 0.02 and t_max 0.98 → 0.5
linearly over 25k steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.prompts import PerpNeg
from dreamgen.registry import register


@dataclass
class AsyncSDConfig(LossConfig):
    name: str = "asyncsd"
    guidance_scale: float = 7.5
    t_min: Any = (0, 0.5, 0.02, 25000)
    t_max: Any = (0, 0.98, 0.5, 25000)
    plus_ratio: float = 0.1  # r: how far past t the target timestep may lie, as a fraction of t − t_min


@register("loss", "asyncsd", config=AsyncSDConfig,
          summary="Asynchronous SD: s_t²(E_ω(x_t,t) − e_y(x_t+,t+)), target one noise level later",
          paper="ScaleDreamer (Ma et al., 2024)", state="none", nfe=3)
class AsyncSD(DistillationLoss):
    def forward(self, inp: LossInput) -> LossOutput:
        x, core = inp.x, self.core
        t = core.sample_t(x.shape[0], inp.step, inp.total_steps)
        t_plus = core.t_plus(t, self.cfg.plus_ratio, inp.step)
        eps = torch.randn_like(x)
        x_t = core.add_noise(x.detach(), eps, t)
        x_tp = core.add_noise(x.detach(), eps, t_plus)
        if inp.perp_neg is None:
            e_y, e_0, e_y_plus = core.eps(torch.cat([x_t, x_t, x_tp]), torch.cat([t, t, t_plus]),
                                          torch.cat([inp.cond, inp.uncond, inp.cond])).chunk(3)
        else:
            e_y_both, e_0_both, _ = core.eps_guided(
                torch.cat([x_t, x_tp]), torch.cat([t, t_plus]), torch.cat([inp.cond, inp.cond]),
                torch.cat([inp.uncond, inp.uncond]), PerpNeg.cat([inp.perp_neg, inp.perp_neg]))
            (e_y, e_y_plus), e_0 = e_y_both.chunk(2), e_0_both.chunk(2)[0]
        g = core.weight(t, x) * (core.cfg_combine(e_y, e_0, self.cfg.guidance_scale) - e_y_plus)
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "t_plus": t_plus.float().mean().item(),
                                 "grad_norm": g.norm().item() / x.shape[0]})
