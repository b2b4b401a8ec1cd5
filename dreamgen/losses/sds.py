"""SDS — Score Distillation Sampling (Poole, Jain, Barron & Mildenhall, "DreamFusion: Text-to-3D using 2D
Diffusion", ICLR 2023, arXiv 2209.14988; docs/losses.md).

Update rule, one t ~ U{t_min..t_max} and one eps ~ N(0, I) per sample:

    x_t = a_t·x + s_t·eps
    g   = w(t)·(E_ω(x_t; y) − eps),        E_ω = e_0 + ω·(e_y − e_0)   (with Perp-Neg's term when the batch has it)

The frozen denoiser is never backpropagated; ``surrogate_loss`` makes ∂loss/∂x = g/B.
Invariants (tests/test_loss_sds.py): a point-mass denoiser at x gives g ≡ 0; under the exact score of a Gaussian
the mean of g over x ~ p and eps is 0; g is affine in ω with shared (t, eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register


@dataclass
class SDSConfig(LossConfig):
    name: str = "sds"


@register("loss", "sds", config=SDSConfig, summary="Score Distillation Sampling: w(t)(E_ω(x_t) − eps)",
          paper="DreamFusion (Poole et al., 2022)", state="none", nfe=2)
class SDS(DistillationLoss):
    def sds_grad(self, inp: LossInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (g [B,C,h,w], t [B])."""
        x, core = inp.x, self.core
        t, eps, x_t = core.perturb(x, inp.step, inp.total_steps)
        e_cfg, _, _ = core.eps_cfg(x_t, t, inp.cond, inp.uncond, perp_neg=inp.perp_neg)
        return core.weight(t, x) * (e_cfg - eps), t

    def forward(self, inp: LossInput) -> LossOutput:
        g, t = self.sds_grad(inp)
        loss = self.cfg.weight * surrogate_loss(inp.x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / g.shape[0]})
