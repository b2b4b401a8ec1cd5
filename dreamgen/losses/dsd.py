"""DSD — Diverse Score Distillation (Xu, Srinivasa, Liu & Tulsiani, "Diverse Score Distillation", arXiv 2412.06780,
2024; docs/losses.md).

Each run (and each particle) owns a seed noise x_T, drawn once. At a timestep t and a slightly later t':

    t'  = t + ⌊U·r·(t − t_min)⌋,   U ~ U[0, 1),  r = ``plus_ratio``
    x̃_t' = DDIM_ω(x_T: T−1 → t')                 CFG DDIM ODE over ``n_ddim_steps`` equal steps
    ε̂   = E_ω(x̃_t', t')                            the noise that seed's sampling path carries at t'
    x_t' = a_t'·x + s_t'·ε̂,   x_t = a_t·x + s_t·ε̂   the render re-noised with ε̂
    g   = s_t²·(E_ω(x_t, t) − E_ω'(x_t', t'))         ω' = ``target_guidance_scale``

Following one seed's deterministic path instead of fresh noise ties the render to one mode of the prior, so
different seeds give different 3-D results. With t' = t, g = s_t²·(ω − ω')·dC, the classifier (CSD) form; for a
fixed (seed, x, t, t'), g is deterministic.

The reference (``stable_diffusion_dsd_guidance.py``) has two branches, and each is one setting here:
- Perp-Neg on, as its shipped ``configs/dsd.yaml`` (and our preset ``configs/dsd.yaml``): prediction and path
  e_0 + 7.5·(dC + Σ_i w_i·perp(…)), i.e. ω = 7.5, and target e_y + Σ_i w_i·perp(…), i.e. ω' = 1 with Perp-Neg.
  These are the defaults; Perp-Neg itself comes with the batch (``prompts.perp_neg``).
- Perp-Neg off: its threestudio-convention CFG e_y + 7.5·dC gives prediction and path ω = 8.5 and a target that is a
  second CFG estimate, e_y + dC, i.e. ω' = 2: ``loss.guidance_scale=8.5 loss.target_guidance_scale=2``.
Other choices: t deterministic, √-annealed from 0.98 to 0.32 over the run, r = 0.1, 10 DDIM steps, w = s_t². The
reference walks a global grid linspace(T−1, 0, n) down to the last point above t', then jumps to t' (≤ n steps); we
use n equal steps from T−1 to t' per sample (``ScoreCore.ddim_cfg_sample``), so one batch shares one loop. Its
``delta_min`` (t' ≥ 1, then 10) never binds for t ≥ t_min = 320 and is omitted. x_T is [P,C,h,w] for P particles
(row block p uses seed p) and lives in the state_dict, so resuming keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import FixedNoise, LossConfig, surrogate_loss
from dreamgen.registry import register


@dataclass
class DSDConfig(LossConfig):
    name: str = "dsd"
    guidance_scale: float = 7.5  # ω of the prediction and of the seed's path
    target_guidance_scale: float = 1.0  # ω' of the target
    t_min: Any = 0.32
    t_max: Any = 0.98
    t_sampling: str = "sqrt_anneal"
    plus_ratio: float = 0.1  # r in t' = t + ⌊U·r·(t − t_min)⌋
    n_ddim_steps: int = 10  # DDIM steps from x_T down to t'


@register("loss", "dsd", config=DSDConfig,
          summary="Diverse Score Distillation: s_t²(E_ω(x_t) − E_ω'(x_t')), noise from a fixed seed's DDIM path",
          paper="Diverse Score Distillation (Xu et al., 2024)", state="fixed seed noise x_T per particle",
          nfe="2·n_ddim_steps + 6")
class DSD(DistillationLoss):
    def __init__(self, cfg: DSDConfig, guidance):
        super().__init__(cfg, guidance)
        self.seed_noise = FixedNoise()

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, cfg, b = inp.x, self.core, self.cfg, inp.x.shape[0]
        guided = dict(cond=inp.cond, uncond=inp.uncond, perp_neg=inp.perp_neg)
        t = core.sample_t(b, inp.step, inp.total_steps)
        t_prime = core.t_plus(t, cfg.plus_ratio, inp.step)
        p = inp.n_particles
        x_T = self.seed_noise((p, *x.shape[1:]), x).repeat_interleave(b // p, dim=0)

        x_path = core.ddim_cfg_sample(x_T, t.new_full((b,), core.T - 1), t_prime, n_steps=cfg.n_ddim_steps, **guided)
        eps_hat, _, _ = core.eps_cfg(x_path, t_prime, **guided)

        x_t = core.add_noise(x.detach(), eps_hat, t)
        x_tp = core.add_noise(x.detach(), eps_hat, t_prime)
        e_cfg, _, _ = core.eps_cfg(x_t, t, **guided)
        e_target, _, _ = core.eps_cfg(x_tp, t_prime, scale=cfg.target_guidance_scale, **guided)
        g = core.weight(t, x) * (e_cfg - e_target)
        loss = cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "t_prime": t_prime.float().mean().item(),
                                 "grad_norm": g.norm().item() / b})
