"""CDS — Consistency Distillation Sampling (Wu, Zhou, Yi, Yuan & Zhang, "Consistent3D: Towards Consistent
High-Fidelity Text-to-3D Generation with Deterministic Sampling Prior", CVPR 2024, arXiv 2401.09050;
docs/losses.md).

Update rule in the VE form z = x + sv·eps (sv_t = s_t/a_t, and z/√(1+sv_t²) = x_t exactly), with ONE noise
eps* drawn at the first call and shared by every sample and every step, a teacher timestep s and a later t > s:

    z_t = x + sv_t·eps*
    ε_t = E_ω(z_t/√(1+sv_t²), t)
    ẑ_s = z_t + (sv_s − sv_t)·ε_t                  one Euler step of the probability-flow ODE from t to s
    ε_s = E_ω(ẑ_s/√(1+sv_s²), s)
    g   = w(t)·(ε_t − ε_s)

Sign. Our surrogate descends along g (target = x − g); the reference code writes ``target = x + grad``, so its
``grad`` is −g. Which sign pulls x toward the data follows from a Gaussian teacher N(μ, σ²I), whose prediction is
ε(z, sv) = sv·(z − μ)/(σ² + sv²). Writing d = z_t − μ, the two predictions are exactly

    ε_t − ε_s = κ·d,      κ = σ²·(sv_t − sv_s) / ((σ² + sv_t²)(σ² + sv_s²)) ≥ 0,

so g = w·κ·(x + sv_t·eps* − μ) and x ← x − lr·g moves x toward μ (up to the fixed offset sv_t·eps*, which averages
out over the annealed t): g = w(ε_t − ε_s) is the attracting sign, the opposite one repels. A point-mass teacher
(σ = 0) has straight ODE paths, ε_s = ε_t, and g ≡ 0 for EVERY x, where SDS still pulls.

Schedule (``configs/consistency-coarse.yaml``): s anneals 700 → 100 with √-progress over 3000 steps,
t = s + U{100..299} clamped to [t_min, t_max] = [100, 980], CFG 100 → 50 over 3000 steps in threestudio's convention
(ω = 101 → 51 here), w uniform, g clipped to ±c with c: 2 → 8 over 3000 steps. The optional std-rescaling of x̂0
(``recon_std_rescale``, 0 in that config) is not implemented. eps* lives in the state_dict, so a resumed run
continues with the same noise; a new latent resolution draws a new eps*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import FixedNoise, LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.schema import scheduled


@dataclass
class CDSConfig(LossConfig):
    name: str = "cds"
    guidance_scale: Any = (0, 101.0, 51.0, 3000)  # ω, diffusers convention (threestudio 100 → 50)
    t_min: Any = 0.1  # clamp of t to [100, 980]
    t_max: Any = 0.98
    weighting: str = "uniform"
    s_start: int = 700  # teacher timestep s, annealed with √-progress ...
    s_end: int = 100
    anneal_steps: int = 3000  # ... over this many steps
    gap_min: int = 100  # t = s + U{gap_min..gap_max}
    gap_max: int = 299
    grad_clip: Any = (0, 2.0, 8.0, 3000)  # |g| ≤ c (a number or schedule), None for no clipping


@register("loss", "cds", config=CDSConfig,
          summary="Consistency Distillation Sampling: w(ε_t − ε_s) along one PF-ODE Euler step, fixed shared noise",
          paper="Consistent3D (Wu et al., 2024)", state="fixed shared noise eps*", nfe=4)
class CDS(DistillationLoss):
    def __init__(self, cfg: CDSConfig, guidance):
        super().__init__(cfg, guidance)
        self.shared_noise = FixedNoise()

    def timesteps(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t), each [n] long: s on the √-annealed schedule, t = s + a random gap, clamped to the t range."""
        cfg = self.cfg
        p = math.sqrt(min(max(step / max(cfg.anneal_steps, 1), 0.0), 1.0))
        s_step = int(round(cfg.s_start - (cfg.s_start - cfg.s_end) * p))
        lo, hi = self.core.t_range(step)
        dev = self.core.alphas_cumprod.device
        k = n if cfg.per_sample_t else 1
        t = (s_step + torch.randint(cfg.gap_min, cfg.gap_max + 1, (k,), device=dev)).clamp(lo, hi).expand(n)
        return torch.full((n,), s_step, dtype=torch.long, device=dev), t.clone()

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, b = inp.x, self.core, inp.x.shape[0]
        s, t = self.timesteps(b, inp.step)
        scale = scheduled(self.cfg.guidance_scale, inp.step)
        eps_star = self.shared_noise((1, *x.shape[1:]), x)
        a_t, s_t = core.alpha_sigma(t, x)
        a_s, s_s = core.alpha_sigma(s, x)
        sv_t, sv_s = s_t / a_t, s_s / a_s

        z_t = x.detach() + sv_t * eps_star
        e_t, _, _ = core.eps_cfg(z_t / (1 + sv_t**2).sqrt(), t, inp.cond, inp.uncond, scale, inp.perp_neg)
        z_s = z_t + (sv_s - sv_t) * e_t
        e_s, _, _ = core.eps_cfg(z_s / (1 + sv_s**2).sqrt(), s, inp.cond, inp.uncond, scale, inp.perp_neg)
        g = core.weight(t, x) * (e_t - e_s)

        if self.cfg.grad_clip is not None:
            c = scheduled(self.cfg.grad_clip, inp.step)
            g = g.clamp(-c, c)
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "s": float(s[0]), "guidance_scale": scale,
                                 "grad_norm": g.norm().item() / b})
