"""ASD — Adversarial Score Distillation (Wei, Zhou, Sun & Zhang, "Adversarial Score Distillation: When score
distillation meets GAN", CVPR 2024, arXiv 2312.00739; docs/losses.md).

The particle score ε_ψ is read as a WGAN discriminator. The generator is VSD's (s_L = ``lora_guidance_scale`` = 1):

    g = w(t)·(E_ω^pre(x_t; y_vd) − ê_ψ(x_t; y, c))

and the ψ step, on x' = sg(x), t' ~ U{0..T−1}, camera dropout 0.1, descends

    L_D = mean‖e_ψ(x'_t'; y, c̃) − eps'‖² + γ·mean‖e_ψ(x'_t'; y, c̃) − sg(ẽ^pre(x'_t'; y_vd))‖²

with γ < 0 pushing the fake score away from the pretrained (real) one. The real score ẽ^pre is the pretrained
conditional prediction with no CFG, as in ``2y7c3/ASD`` ``train_lora``: e_y(x'_t'; y_vd), or with Perp-Neg the
Perp-Neg conditional prediction e_y + Σ_i w_i·perp(e_neg_i − e_0, dC) (``ScoreCore.eps_guided``, one batched call).
γ = 0 is VSD's ψ step exactly; γ = −1 makes L_D linear in e_ψ, with ∂L_D/∂e_ψ = 2(sg(ẽ^pre) − eps')/N.

Perp-Neg: the reference's shipped ``configs/test_nerf.yaml`` turns it on for the generator and the discriminator
target alike; our preset ``configs/asd.yaml`` does the same (``prompts.perp_neg: true``). One difference: the
reference's discriminator target takes the perpendicular parts of the raw predictions, e_y + Σ_i w_i·perp(e_neg_i,
e_y), with no e_0 subtracted; we use the one shared Perp-Neg rule, so the target is E_1 with Perp-Neg.

Defaults (``configs/test_nerf.yaml``): γ = −0.75 (the class default there is −1), ω = 7.5, t_max 0.98 → 0.5 at
step 5000, w = s_t² (the 3DGS config uses ``weighting=sigma_ratio``, s_t/a_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from dreamgen.losses.base import LossInput
from dreamgen.losses.vsd import VSD, VSDConfig
from dreamgen.registry import register


@dataclass
class ASDConfig(VSDConfig):
    name: str = "asd"
    gamma: float = -0.75  # γ


@register("loss", "asd", config=ASDConfig,
          summary="Adversarial Score Distillation: VSD whose ε_ψ is pushed away from the pretrained score",
          paper="Adversarial Score Distillation (Wei et al., 2024)",
          state="LoRA discriminator ε_ψ + camera MLP + AdamW (one pretrained fwd + LoRA fwd/bwd per step)", nfe=4)
class ASD(VSD):
    def lora_objective(self, e_psi: Tensor, eps: Tensor, x_t: Tensor, t: Tensor, inp: LossInput) -> Tensor:
        if inp.perp_neg is None:
            e_real = self.core.eps(x_t, t, inp.cond)
        else:
            e_real, _, _ = self.core.eps_guided(x_t, t, inp.cond, inp.uncond, inp.perp_neg)
        return F.mse_loss(e_psi.float(), eps.float()) + self.cfg.gamma * F.mse_loss(e_psi.float(), e_real.float())
