"""VSD — Variational Score Distillation (Wang, Lu, Wang, Bao, Li, Su & Zhu, "ProlificDreamer: High-Fidelity and
Diverse Text-to-3D Generation with Variational Score Distillation", NeurIPS 2023, arXiv 2305.16213; docs/losses.md).

The render is a particle of a distribution q whose score ε_ψ is learnt alongside it (a LoRA copy of the denoiser
with a camera embedding, ``particle_score.ParticleScore``). Each call does two things.

Generator, one t ~ U{t_min..t_max} and one eps ~ N(0, I) per sample:

    x_t  = a_t·x + s_t·eps
    ê_ψ  = e_ψ(x_t; y, ∅cam) + s_L·(e_ψ(x_t; y, c) − e_ψ(x_t; y, ∅cam))
    g    = w(t)·(E_ω^pre(x_t; y_vd) − ê_ψ)

The pretrained model gets the view-dependent prompt y_vd (``inp.cond``), ε_ψ the view-independent prompt y
(``inp.prompts.cond_plain``; ``inp.cond`` when there is no prompt set). s_L = ``lora_guidance_scale`` = 1 uses the
camera-conditioned score. With Perp-Neg in the batch, E_ω^pre is Perp-Neg's (``ScoreCore.eps_guided``).

Particle-score step, on x' = sg(x) so that nothing flows back to x, repeated ``lora_steps_per_iter`` times:

    t' ~ U{0..T−1},  eps' ~ N(0, I),  c̃ = ∅cam with probability ``lora_camera_dropout`` (else c)
    L_ψ = mean‖e_ψ(a_t' x' + s_t' eps'; y, c̃) − eps'‖²,  one AdamW step on ψ

The generator uses ψ from before this step (threestudio's order). With P particles in x (particle-major), they
share ψ; every row is one sample of both the generator and the ψ step.

Choices: ε_ψ predicts ε, as the guidance does (threestudio's v-prediction LoRA is converted to ε by the guidance's
trainable copy). Camera dropout is drawn per sample from the global torch RNG; threestudio draws one Python coin per
batch, the same at its batch size 1.

Defaults (``configs/prolificdreamer.yaml``): ω = 7.5, t ∈ [0.02, 0.98], t_max → 0.5 at step 5000, w = s_t²,
s_L = 1, LoRA rank 4, lr 1e-4, dropout 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import surrogate_loss
from dreamgen.losses.particle_score import ParticleScore, ParticleScoreConfig
from dreamgen.registry import register


@dataclass
class VSDConfig(ParticleScoreConfig):
    name: str = "vsd"
    lora_guidance_scale: float = 1.0  # s_L


@register("loss", "vsd", config=VSDConfig, summary="Variational Score Distillation: w(t)(E_ω(x_t) − ê_ψ(x_t; c))",
          paper="ProlificDreamer (Wang et al., 2023)",
          state="LoRA score ε_ψ + camera MLP + AdamW (one LoRA fwd/bwd per step)", nfe=4)
class VSD(DistillationLoss):
    def __init__(self, cfg: VSDConfig, guidance):
        super().__init__(cfg, guidance)
        self.particle_score = ParticleScore(guidance, cfg)

    @property
    def lora_scale(self) -> float:
        """s_L in ê_ψ = e_ψ(∅cam) + s_L·(e_ψ(c) − e_ψ(∅cam))."""
        return self.cfg.lora_guidance_scale

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, score = inp.x, self.core, self.particle_score
        b = x.shape[0]
        y = inp.prompts.cond_plain(b) if inp.prompts is not None else inp.cond

        t, eps, x_t = core.perturb(x, inp.step, inp.total_steps)
        e_pre, _, _ = core.eps_cfg(x_t, t, inp.cond, inp.uncond, perp_neg=inp.perp_neg)
        e_cam, e_free = score.eps_camera_pair(x_t, t, y, inp.camera)
        e_psi = e_free + self.lora_scale * (e_cam - e_free)
        g = core.weight(t, x) * (e_pre - e_psi)
        loss = self.cfg.weight * surrogate_loss(x, g)
        logs = {"t": t.float().mean().item(), "grad_norm": g.norm().item() / b}

        if score.trainable and self.cfg.lora_steps_per_iter > 0:
            lora = [self.particle_score_step(x.detach(), y, inp) for _ in range(self.cfg.lora_steps_per_iter)]
            logs["lora_loss"] = sum(lora) / len(lora)
        return LossOutput(loss, logs)

    def particle_score_step(self, x0: Tensor, y: Tensor, inp: LossInput) -> float:
        """One AdamW step of ψ on a fresh (t', eps', c̃); returns the objective's value."""
        core, b = self.core, x0.shape[0]
        t = torch.randint(0, core.T, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = core.add_noise(x0, eps, t)
        camera = inp.camera
        if camera is not None:
            keep = torch.rand(b, 1, device=camera.device) >= self.cfg.lora_camera_dropout
            camera = camera * keep
        e_psi = self.particle_score.predict_noise(x_t, t, y, camera)
        objective = self.lora_objective(e_psi, eps, x_t, t, inp)
        self.particle_score.step(objective)
        return objective.item()

    def lora_objective(self, e_psi: Tensor, eps: Tensor, x_t: Tensor, t: Tensor, inp: LossInput) -> Tensor:
        """L_ψ = mean‖e_ψ − eps'‖², denoising score matching of q (ASD's objective also reads x_t, t, inp)."""
        return F.mse_loss(e_psi.float(), eps.float())

    def checkpoint_state(self) -> dict:
        return {"particle_score": self.particle_score.checkpoint_state()}

    def load_checkpoint_state(self, state: dict) -> None:
        self.particle_score.load_checkpoint_state(state["particle_score"])
