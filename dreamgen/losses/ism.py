"""ISM — Interval Score Matching (Liang, Yang, Lin, Li, Xu & Chen, "LucidDreamer: Towards High-Fidelity Text-to-3D
Generation via Interval Score Matching", CVPR 2024, arXiv 2311.11284; docs/losses.md).

SDS's target eps is replaced by the unconditional prediction at an earlier point of the render's own deterministic
DDIM trajectory. One t per batch (``per_sample_t = False``), s = max(t − Δ, 0), all inversions unconditional (η = 0):

    x_u = a_u·x + s_u·ξ,               u = max(s − k·J, 0), ξ = eps + offset·N(0,1) per channel
    x_s = DDIM-invert(x_u: u → s)      jumps of at most J = ``inversion_step`` (200), at most k = 5 of them
    x_t = DDIM-step(x_s: s → t)        with e_0(x_s, s)
    g   = λ_g·w(t)·(E_ω(x_t, t, y) − e_0(x_s, s)),     w(t) = sv_t = s_t/a_t

- Δ anneals linearly from ``delta_t_start`` (100) to ``delta_t`` over ``warmup_steps`` (1500). ``delta_t`` = 80 is
  the reference ``GuidanceParams`` default; the shipped configs use 25.
- The t range [0.02, 0.5] grows from 0.98 over the warmup: ``t_max = [0, 0.98, 0.5, 1500]``.
- ``offset_noise`` 0.1 is the reference's per-channel offset, shared over the batch (0 disables).
  ``start_noise`` scales the whole injected noise ξ (1 = reference): the only randomness of ISM besides t enters
  at the nearly clean start point (ᾱ_0 ≈ 0.999), so with ``start_noise = 0`` g is a deterministic function of
  (x, t, Δ).
- The reference's random horizontal flip of the renders is an augmentation of the render, not of this loss.
- Subclasses (TSM) change only :meth:`target`. Perp-Neg, when the batch carries it, enters E_ω only; the
  inversions stay unconditional.

Invariant: Δ = 0 ⇒ g = λ_g·sv_t·ω·dC at the inverted point (the CSD form).
Cost: ceil((s − u)/J) + 1 unconditional NFE plus the 2-NFE CFG pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.schema import scheduled


@dataclass
class ISMConfig(LossConfig):
    name: str = "ism"
    guidance_scale: float = 7.5
    t_min: Any = 0.02
    t_max: Any = field(default_factory=lambda: [0, 0.98, 0.5, 1500])
    per_sample_t: bool = False
    weighting: str = "sigma_ratio"  # sv_t = s_t/a_t
    lambda_guidance: float = 0.1  # λ_g
    delta_t: int = 80  # Δ after the warmup
    delta_t_start: int = 100  # Δ at step 0
    warmup_steps: int = 1500
    inversion_step: int = 200  # J: largest jump of the x → x_s inversion
    max_inversion_steps: int = 5  # k
    offset_noise: float = 0.1
    start_noise: float = 1.0


@register("loss", "ism", config=ISMConfig,
          summary="Interval Score Matching: λ·sv_t·(E_ω(x_t) − e_0(x_s)) along the DDIM-inverted path",
          paper="LucidDreamer (Liang et al., CVPR 2024)", state="none", nfe="3 + ceil(s/200)")
class ISM(DistillationLoss):
    def interval(self, step: int) -> int:
        """Δ at this optimisation step."""
        cfg = self.cfg
        return int(scheduled([0, cfg.delta_t_start, cfg.delta_t, cfg.warmup_steps], step))

    def target(self, x_s: Tensor, e_s: Tensor, s: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        """The prediction E_ω(x_t) is pulled towards: ISM's is e_0(x_s, s)."""
        return e_s

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg = inp.x, self.core, self.cfg
        n = x.shape[0]
        t = core.sample_t(n, inp.step, inp.total_steps)
        xi = cfg.start_noise * core.noise(x, cfg.offset_noise)
        s = (t - self.interval(inp.step)).clamp(min=0)

        u = (s - cfg.inversion_step * cfg.max_inversion_steps).clamp(min=0)
        x_u = core.add_noise(x.detach(), xi, u)
        x_s = core.ddim_invert(x_u, u, s, inp.uncond, jump=cfg.inversion_step)
        e_s = core.eps(x_s, s, inp.uncond)
        x_t = core.ddim_step(x_s, e_s, s, t)

        e_cfg, _, _ = core.eps_cfg(x_t, t, inp.cond, inp.uncond, perp_neg=inp.perp_neg)
        g = cfg.lambda_guidance * core.weight(t, x) * (e_cfg - self.target(x_s, e_s, s, t, inp.uncond))
        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "s": s.float().mean().item(),
                                 "grad_norm": g.norm().item() / n})
