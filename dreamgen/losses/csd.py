"""CSD — Classifier Score Distillation (Yu, Guo, Li, Yuan & Qi, "Text-to-3D with Classifier Score Distillation",
ICLR 2024, arXiv 2310.19415; docs/losses.md).

Update rule, one t ~ U{t_min..t_max} and one eps ~ N(0, I) per sample, x_t = a_t·x + s_t·eps:

    g = ω·w(t)·[a_c·e_y + a_n·e_neg + a_∅·e_"" + a_ε·eps]

- The paper's form is g = ω·w(t)·dC, dC = e_y − e_"": coefficients (a_c, a_n, a_∅, a_ε) = (1, 0, −1, 0), the
  defaults here, with no noise term. The general form is the reference code's (``stable_diffusion_triple_guidance``).
- Every coefficient may be a schedule ``[start_step, v0, v1, end_step]``. The reference configs, for reproduction:
  ``csd-sd-refine`` (SD-2.1-base) a_n = [0, -1, -0.5, 10000], a_∅ = [0, 0, -0.5, 10000], t_max 0.5, w = s²;
  ``csd-if`` a_n = [0, 0, -1, 5000], a_∅ = [0, -1, 0, 5000], weighting uniform, t_max [5000, 0.98, 0.5, 5001].
- ω: the reference code absorbs it into Adam's learning rate and uses 1, the default here.
- e_neg uses ``negative_prompt`` (csd-if's string), evaluated only when a_n ≠ 0; all predictions come from one
  batched forward.
- Perp-Neg (when the batch carries it): e_y is Perp-Neg's conditional prediction e_y + Σ_i w_i·perp(e_neg_i − e_"",
  dC) (``ScoreCore.eps_guided``), so the paper form becomes ω·w·(dC + Σ_i w_i·perp(…)). The reference code adds
  that term with a coefficient of its own (3 in csd-if); here it rides on a_c.

Invariants: coefficients summing to 0 make g invariant to a constant added to every ε-prediction;
g_SDS(ω) − g_SDS(0) = ω·g_CSD with shared (t, eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.schema import scheduled


@dataclass
class CSDConfig(LossConfig):
    name: str = "csd"
    guidance_scale: float = 1.0  # ω, a plain multiplier here
    cond_coef: Any = 1.0  # a_c
    negative_coef: Any = 0.0  # a_n
    null_coef: Any = -1.0  # a_∅
    noise_coef: Any = 0.0  # a_ε
    negative_prompt: str = "oversaturated color, ugly, tiling, low quality, noisy"


@register("loss", "csd", config=CSDConfig, summary="Classifier Score Distillation: ω·w(t)·(e_y − e_0), no noise term",
          paper="Text-to-3D with Classifier Score Distillation (Yu et al., ICLR 2024)", state="none", nfe="2-3")
class CSD(DistillationLoss):
    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg = inp.x, self.core, self.cfg
        n = x.shape[0]
        t, eps, x_t = core.perturb(x, inp.step, inp.total_steps)

        a_c, a_n, a_0, a_eps = (scheduled(v, inp.step)
                                for v in (cfg.cond_coef, cfg.negative_coef, cfg.null_coef, cfg.noise_coef))
        negative = [core.text_embedding(cfg.negative_prompt, n)] if a_n else []
        e_y, e_0, e_neg = core.eps_guided(x_t, t, inp.cond, inp.uncond, inp.perp_neg, extra=negative)

        combo = a_c * e_y + a_0 * e_0 + a_eps * eps
        if e_neg:
            combo = combo + a_n * e_neg[0]
        g = cfg.guidance_scale * core.weight(t, x) * combo
        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / n})
