"""Refine — image-space refinement by multi-step denoising (Tang, Ren, Zhou, Liu & Zeng, "DreamGaussian: Generative
Gaussian Splatting for Efficient 3D Content Creation", ICLR 2024, arXiv 2309.16653, Sec. 3.3; docs/losses.md).

Update rule, one t ~ U{t_min..t_max} and one eps ~ N(0, I) per sample:

    x_t  = a_t·x + s_t·eps
    x̂    = DDIM_ω(x_t, t → 0; y)        n_steps deterministic CFG steps, the last one returning the x̂0 prediction
    g    = x − x̂                        the gradient of ½‖x − sg(x̂)‖²

Where SDS takes one noisy step towards the data, the target x̂ is a finished image that keeps the render's layout
at moderate t, so a detail the prior adds (a door, a window) arrives whole from every draw of eps. It is a
refinement loss: from scratch, at large t, x̂ is a new sample per view. The texture stage uses it (scene.py).
Invariants (tests/test_loss_refine.py): a point-mass denoiser at x gives g ≡ 0; with one step, g equals SDS's
gradient under the weighting s_t/a_t (x − x̂0 = s_t/a_t·(E_ω − eps)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.schema import bounded


@dataclass
class RefineConfig(LossConfig):
    name: str = "refine"
    guidance_scale: float = bounded(7.5, ge=0.0)
    t_min: Any = bounded(0.2, gt=0.0, lt=1.0)
    t_max: Any = bounded(0.5, gt=0.0, lt=1.0)
    n_steps: int = bounded(5, ge=1)  # DDIM steps from t to the clean target (2 denoiser evaluations each)


@register("loss", "refine", config=RefineConfig,
          summary="DreamGaussian's refinement: x − DDIM_ω(x_t → 0), MSE to a multi-step denoised render",
          paper="DreamGaussian (Tang et al., 2023)", state="none", nfe="2·n_steps")
class Refine(DistillationLoss):
    def forward(self, inp: LossInput) -> LossOutput:
        x, core = inp.x, self.core
        t, _, x_t = core.perturb(x, inp.step, inp.total_steps)
        target = core.ddim_cfg_sample(x_t, t, None, inp.cond, inp.uncond, self.cfg.n_steps, perp_neg=inp.perp_neg)
        g = x.detach() - target
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / g.shape[0]})
