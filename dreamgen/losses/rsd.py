"""RSD — Repulsive Score Distillation (Zilberstein, Mardani & Segarra, "Repulsive Latent Score Distillation for
Solving Inverse Problems", ICLR 2025, arXiv 2406.16683; docs/losses.md).

N particles (``LossInput.n_particles``; x is particle-major, B/N rows per particle) share t and draw their own
eps^i. With features f_i = f(x_t^i) and J_i = ∂f_i/∂x_t^i, the update of particle i is SDS plus an SVGD-style
repulsion from the others:

    x_t^i = a_t·x^i + s_t·eps^i
    k_ij  = exp(−‖f_i − f_j‖²/h_i),        h_i = median_{j≠i} ‖f_i − f_j‖² / log(N − 1)
    g_i   = w(t)·[E_ω(x_t^i) − eps^i − γ·s_t·J_iᵀ(Σ_{j≠i} (2/h_i)·k_ij·(f_i − f_j)) / Σ_{j≠i} k_ij]

Sign: x ← x − lr·g moves x^i along +(f_i − f_j), away from the other particles — the repulsive sign of the 2-D
reference (``constrained_sampling/algos/rsd.py``). The 3-D threestudio fork adds +γ·s_t·Jᵀ(…) unnormalised, which
attracts; we do not follow it. The kernel sums skip j = i (as the reference does); the bandwidth is per particle.
N = 2 would give log(1) = 0, an infinite bandwidth and no repulsion, so N ≥ 3 is required.

Features: ``latent`` (default) is x_t^i itself, flattened over the particle's rows, so J_i = I. The paper uses DINO
ViT-S/16 features of the decoded x_t^i; any ``"package.module:function"`` mapping (x_t [B,C,h,w], guidance) to
[B, ...] features, differentiable in x_t, plugs in, and J_iᵀ(·) is then one autograd vector-Jacobian product.
γ = 0 gives SDS. Default γ = 1000, the 3-D fork's value; with the 1/Σk normalisation and median bandwidth the
repulsion's size depends on the feature space, so γ is the knob to tune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.errors import DreamgenError
from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.rewards import import_callable


@dataclass
class RSDConfig(LossConfig):
    name: str = "rsd"
    gamma: float = 1000.0  # γ, strength of the repulsion
    features: str = "latent"  # "latent" (J = I) or "package.module:function"


@register("loss", "rsd", config=RSDConfig,
          summary="Repulsive Score Distillation: SDS per particle + RBF-kernel repulsion between N ≥ 3 particles",
          paper="Repulsive Score Distillation (Zilberstein et al., 2024)", state="N particles (n_particles)",
          nfe="2 per particle")
class RSD(DistillationLoss):
    def __init__(self, cfg: RSDConfig, guidance):
        super().__init__(cfg, guidance)
        self.feature_fn = None if cfg.features == "latent" else import_callable(cfg.features)

    def repulsion(self, x_t: Tensor, n: int) -> Tensor:
        """J_iᵀ(Σ_j (2/h_i)·k_ij·(f_i − f_j)) / Σ_j k_ij for every particle, shaped like x_t."""
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(self.feature_fn is not None)
            f = (x_in if self.feature_fn is None else self.feature_fn(x_in, self.guidance)).reshape(n, -1)
            diff = f.detach()[:, None] - f.detach()[None]  # [N,N,D]: f_i − f_j
            dist2 = (diff**2).sum(-1)
            off = ~torch.eye(n, dtype=torch.bool, device=f.device)
            h = dist2[off].reshape(n, n - 1).median(dim=1).values / math.log(n - 1)  # [N]
            k = torch.exp(-dist2 / h[:, None]) * off
            v = (2 / h[:, None, None] * k[..., None] * diff).sum(1) / k.sum(1, keepdim=True)  # [N,D]
            if self.feature_fn is None:
                return v.reshape(x_t.shape)
            return torch.autograd.grad(f, x_in, grad_outputs=v)[0]

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, b, n = inp.x, self.core, inp.x.shape[0], inp.n_particles
        if n < 3 or b % n:
            raise DreamgenError(f"rsd repels particles from each other and needs n_particles ≥ 3 dividing the batch "
                                f"(N = 2 makes the kernel bandwidth infinite); got n_particles = {n}, batch {b}")
        t = core.sample_t(b // n, inp.step, inp.total_steps).repeat(n)  # one t per view, shared by the particles
        eps = torch.randn_like(x)
        x_t = core.add_noise(x.detach(), eps, t)
        e_cfg, _, _ = core.eps_cfg(x_t, t, inp.cond, inp.uncond, perp_neg=inp.perp_neg)
        _, s_t = core.alpha_sigma(t, x)
        rep = self.repulsion(x_t, n) if self.cfg.gamma else torch.zeros_like(x)
        g = core.weight(t, x) * (e_cfg - eps - self.cfg.gamma * s_t * rep)
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "repulsion_norm": rep.norm().item() / b,
                                 "grad_norm": g.norm().item() / b})
