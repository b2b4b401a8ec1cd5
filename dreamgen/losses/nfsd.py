"""NFSD — Noise-Free Score Distillation (Katzir, Patashnik, Cohen-Or & Lischinski, "Noise-Free Score Distillation",
ICLR 2024, arXiv 2310.17590; docs/losses.md).

The unconditional prediction is split as e_0 = δ_D + δ_N (domain + noise). With one t and one eps per sample,
x_t = a_t·x + s_t·eps:

    δ_D = e_0                 if t < switch_t (200)
    δ_D = e_0 − e_neg         otherwise
    g   = w(t)·(δ_D + s·dC),  dC = e_y − e_0

There is no explicit −eps term. e_neg uses ``negative_prompt`` (the paper's string); when every t of the batch is
below the switch, the negative branch is not evaluated (2 NFE instead of 3). With Perp-Neg, e_y is its conditional
prediction (``ScoreCore.eps_guided``), so s·dC gains s·Σ_i w_i·perp(e_neg_i − e_0, dC).

Defaults: s = 7.5 (``guidance_scale``), w = s_t² as in the third-party code ([unverified] for the paper), and the
DreamFusion range t ∈ U(0.02, 0.98) ([unverified]). Invariant: g − g_CSD(s) = w·δ_D.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register


@dataclass
class NFSDConfig(LossConfig):
    name: str = "nfsd"
    guidance_scale: float = 7.5  # s
    switch_t: int = 200  # δ_D subtracts e_neg from this timestep on
    negative_prompt: str = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                            "low-resolution, gloomy")


@register("loss", "nfsd", config=NFSDConfig, summary="Noise-Free Score Distillation: w(t)(δ_D + s·dC), no −eps",
          paper="Noise-Free Score Distillation (Katzir et al., ICLR 2024)", state="none", nfe="2-3")
class NFSD(DistillationLoss):
    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg = inp.x, self.core, self.cfg
        n = x.shape[0]
        t, eps, x_t = core.perturb(x, inp.step, inp.total_steps)

        late = t >= cfg.switch_t
        negative = [core.text_embedding(cfg.negative_prompt, n)] if bool(late.any()) else []
        e_y, e_0, e_neg = core.eps_guided(x_t, t, inp.cond, inp.uncond, inp.perp_neg, extra=negative)
        delta_d = e_0 - late.view(-1, 1, 1, 1) * e_neg[0] if e_neg else e_0

        g = core.weight(t, x) * (delta_d + cfg.guidance_scale * (e_y - e_0))
        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / n})
