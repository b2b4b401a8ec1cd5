"""ESD — Entropic Score Distillation (Wang, Xu, Fan et al., "Taming Mode Collapse in Score Distillation for
Text-to-3D Generation", CVPR 2024, arXiv 2401.00909; docs/losses.md).

VSD whose generator subtracts a mixture of the camera-free and the camera-conditioned particle scores; the
camera-free score is the score of q marginalised over views, so subtracting it maximises the entropy of the
rendered-image distribution and counters the Janus (mode-collapse) failure:

    g = w(t)·[E_ω^pre(x_t; y_vd) − λ·e_ψ(x_t; y, ∅cam) − (1−λ)·e_ψ(x_t; y, c)]

This is VSD's ê_ψ with s_L = 1 − λ (the authors run threestudio's VSD with ``guidance_scale_lora = 0.5``), so ESD
is that parameterisation of ``VSD``: λ = 0 is VSD exactly. Camera dropout in the ψ step (p = 0.1) is what makes
e_ψ(∅cam) a meaningful view-marginal score. Defaults: λ = 0.5 (the README's suggestion), the rest as VSD.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamgen.losses.particle_score import ParticleScoreConfig
from dreamgen.losses.vsd import VSD
from dreamgen.registry import register


@dataclass
class ESDConfig(ParticleScoreConfig):
    name: str = "esd"
    lambda_entropy: float = 0.5  # λ


@register("loss", "esd", config=ESDConfig,
          summary="Entropic Score Distillation: VSD with λ·e_ψ(∅cam) + (1−λ)·e_ψ(c) as the particle score",
          paper="Taming Mode Collapse in Score Distillation (Wang et al., 2024)",
          state="LoRA score ε_ψ + camera MLP + AdamW (one LoRA fwd/bwd per step)", nfe=4)
class ESD(VSD):
    @property
    def lora_scale(self) -> float:
        return 1.0 - self.cfg.lambda_entropy
