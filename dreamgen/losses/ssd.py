"""SSD — Stable Score Distillation (Tang et al., "Stable Score Distillation for High-Quality 3D Generation",
arXiv 2312.09305, 2023; docs/losses.md).

SDS splits into a mode-seeking term (e_y), a mode-disengaging term (dC = e_y − e_0) and a variance-reducing term
(−eps). SSD keeps the classifier direction at large t and, at small t, swaps in a control-variate-reduced e_y
rescaled to the classifier term's norm. One t and one eps per sample, x_t = a_t·x + s_t·eps:

    h = ω·w(t)·dC
    ẽ = e_y − r·eps
    g = (‖h‖/‖ẽ‖)·ẽ   if t ≤ M,   else g = h           (norms per sample)

- ``r_mode = "least_squares"`` (default): r* = ⟨e_y, eps⟩/‖eps‖², the least-squares control-variate coefficient,
  which makes ẽ ⊥ eps. ``"pgc"``: r = ⟨e_y, eps⟩/‖eps‖ as in the third-party PGC-3D code (its batch sum and
  [B]-against-[B,C,H,W] broadcast are read as their B = 1 meaning, per sample). The paper's r is [unverified].
- ``threshold_t`` M = 100 follows PGC-3D (``--ssd_M 100``), [unverified] for the paper.
- ω = 1 and w = s_t² as in PGC-3D (``weight_choice 0``).
- With Perp-Neg, e_y is its conditional prediction (``ScoreCore.eps_guided``) in both terms.

Invariants: t > M ⇒ g = CSD; t ≤ M ⇒ ‖g‖ = ‖h‖ per sample; with r*, ⟨g, eps⟩ = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamgen.errors import ConfigError
from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, bdot, surrogate_loss
from dreamgen.registry import register

R_MODES = ("least_squares", "pgc")


@dataclass
class SSDConfig(LossConfig):
    name: str = "ssd"
    guidance_scale: float = 1.0  # ω multiplying the classifier direction h
    threshold_t: int = 100  # M: the stable term replaces h for t ≤ M
    r_mode: str = "least_squares"


@register("loss", "ssd", config=SSDConfig, summary="Stable Score Distillation: CSD, norm-matched e_y − r·eps for t ≤ M",
          paper="Stable Score Distillation (Tang et al., 2023)", state="none", nfe=2)
class SSD(DistillationLoss):
    def __init__(self, cfg: SSDConfig, guidance):
        if cfg.r_mode not in R_MODES:
            raise ConfigError(f"unknown r_mode {cfg.r_mode!r}; valid: {', '.join(R_MODES)}")
        super().__init__(cfg, guidance)

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg = inp.x, self.core, self.cfg
        n = x.shape[0]
        t, eps, x_t = core.perturb(x, inp.step, inp.total_steps)
        e_y, e_0, _ = core.eps_guided(x_t, t, inp.cond, inp.uncond, inp.perp_neg)

        h = cfg.guidance_scale * core.weight(t, x) * (e_y - e_0)
        eps_sq = bdot(eps, eps)
        r = bdot(e_y, eps) / (eps_sq if cfg.r_mode == "least_squares" else eps_sq.sqrt())
        e_tilde = e_y - r * eps
        stable = (bdot(h, h) / bdot(e_tilde, e_tilde)).sqrt() * e_tilde
        g = torch.where((t <= cfg.threshold_t).view(-1, 1, 1, 1), stable, h)

        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / n})
