"""ASD — Adversarial Score Distillation (Wei et al. 2024; LOSSES.md §8).

The particle score ε_ψ is read as a WGAN discriminator. The generator is VSD's (s_L = ``lora_guidance_scale`` = 1):

    g = w(t)·(E_ω^pre(x_t; y_vd) − ê_ψ(x_t; y, c))

and the ψ step, on x' = sg(x), t' ~ U{0..T−1}, camera dropout 0.1, descends

    L_D = mean‖e_ψ(x'_t'; y, c̃) − eps'‖² + γ·mean‖e_ψ(x'_t'; y, c̃) − sg(e^pre(x'_t'; y_vd))‖²

with γ < 0 pushing the fake score away from the pretrained (real) one. The pretrained target is conditional on the
view-dependent prompt with no CFG, as in ``2y7c3/ASD`` ``train_lora``. γ = 0 is VSD's ψ step exactly; γ = −1 makes
L_D linear in e_ψ, with ∂L_D/∂e_ψ = 2(sg(e^pre) − eps')/N.

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
        e_real = self.core.eps(x_t, t, inp.cond)
        return F.mse_loss(e_psi.float(), eps.float()) + self.cfg.gamma * F.mse_loss(e_psi.float(), e_real.float())
