"""CFD — Consistent Flow Distillation (Yan, Chen & Wang, "Consistent Flow Distillation for Text-to-3D Generation",
ICLR 2025, arXiv 2501.05445; docs/losses.md).

Update rule, with a deterministic t and a noise that is consistent across views:

    ε_c = √β·ε_det + √(1 − β)·ξ,                ξ ~ N(0, I) fresh each step
    g   = (s_t/a_t)·(E_ω(a_t·x + s_t·ε_c, t) − ε_c)

ε_det is a 3-D noise field attached to the object, composited over a background noise b:

    ε_det = o·n(p) + √(1 − o²)·b

p is the expected surface point of a pixel (``LossInput.points``) and o its opacity, both area-resized to the
latent resolution of x; n(p) is a fixed Gaussian field on R³ (below). n(p) and b are independent N(0, 1), so the
variance-preserving mix keeps every pixel exactly N(0, 1) whatever its opacity (the reference alpha-composites
o·n + (1 − o)·b, whose variance drops below 1 at soft edges). A surface point seen from two views gets the same
n(p), so the two views are noised consistently: this, not the update, is what separates CFD from SDS; √β = 0
gives SDS with weight σ/α.

The field: lattice nodes k ∈ Z³ (spacing ``noise_cell``) carry i.i.d. N(0, 1) values per channel, made from
a hash of (k, channel, seed) by Box–Muller, so the field is unbounded and costs no memory; n(p) interpolates the
8 nodes around p with trilinear weights w_k and divides by √Σw_k², which keeps n(p) exactly N(0, 1) and
continuous.
The reference instead rasterises triplane/point noise (peel depth 4) with area-preserving transport.

The background is refreshed each step as b ← √(1 − γ)·b + √γ·ξ' (SDE mode; this keeps b ~ N(0, I)), with γ:
0.01 → 1e-4 over steps 5k–10k. t: progress p is piecewise linear through (0, 0), (0.1, 0.3), (0.5, 0.6),
(1, 0.8) of the run — the reference's knots at steps 0, 2.5k, 12.5k, 25k of a 25k-step run — and
t = T·(t_min + (t_max − t_min)·(1 − p)). CFG: threestudio 70, ω = 71 here. The reference's long negative prompt is
``negative_prompt``; it defaults to "" (the empty prompt) because closed-vocabulary priors cannot encode it.
Without ``points`` (e.g. a bare guidance test) ε_c = ξ and the log says ``consistent_noise = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import FixedNoise, LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.schema import scheduled

_MASK = 0xFFFFFFFF


@dataclass
class CFDConfig(LossConfig):
    name: str = "cfd"
    guidance_scale: float = 71.0  # threestudio 70
    weighting: str = "sigma_ratio"  # s_t/a_t
    sqrt_beta: float = 1.0  # √β: share of the 3-D consistent noise in ε_c
    gamma: Any = (5000, 0.01, 1e-4, 10000)  # background refresh rate γ (number or schedule)
    t_knots: Any = ((0.0, 0.0), (0.1, 0.3), (0.5, 0.6), (1.0, 0.8))  # (fraction of the run, progress p)
    noise_cell: float = 0.02  # lattice spacing of the 3-D noise field, world units
    negative_prompt: str = ""  # replaces the empty prompt in CFG when set


def _hash(h: Tensor) -> Tensor:
    """A 32-bit integer mixer (xor-shift-multiply), on int64 tensors holding values in [0, 2³²)."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK
    return h ^ (h >> 16)


def _node_values(k: Tensor, channels: int, seed: int) -> Tensor:
    """k: [N,3] int64 lattice nodes -> [N,C] i.i.d. N(0, 1) values, a fixed function of (k, channel, seed)."""
    c = torch.arange(channels, device=k.device)
    h = (k[:, None, 0] * 73856093) ^ (k[:, None, 1] * 19349663) ^ (k[:, None, 2] * 83492791)
    h = _hash((h ^ (c * 2654435761) ^ seed) & _MASK)
    u1 = (h.double() + 0.5) / 2**32
    u2 = (_hash(h ^ 0x68E31DA4).double() + 0.5) / 2**32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def noise_field(points: Tensor, channels: int, cell: float, seed: int) -> Tensor:
    """The fixed Gaussian field n(p): points [..., 3] -> [..., C], each value exactly N(0, 1)."""
    q = points.reshape(-1, 3).double() / cell
    base = torch.floor(q)
    frac = q - base
    value = torch.zeros(q.shape[0], channels, dtype=torch.float64, device=points.device)
    norm = torch.zeros(q.shape[0], 1, dtype=torch.float64, device=points.device)
    for corner in range(8):
        offset = torch.tensor([(corner >> i) & 1 for i in range(3)], device=points.device)
        w = torch.where(offset.bool(), frac, 1 - frac).prod(dim=1, keepdim=True)
        value += w * _node_values(base.long() + offset, channels, seed)
        norm += w**2
    return (value / norm.sqrt()).to(points.dtype).reshape(*points.shape[:-1], channels)


@register("loss", "cfd", config=CFDConfig,
          summary="Consistent Flow Distillation: (σ/α)(E_ω(x_t) − ε_c), noise from a 3-D field on the object",
          paper="Consistent Flow Distillation (Yan et al., 2025)",
          state="3-D noise field seed + background noise", nfe=2)
class CFD(DistillationLoss):
    def __init__(self, cfg: CFDConfig, guidance):
        super().__init__(cfg, guidance)
        self.register_buffer("field_seed", torch.randint(0, 2**31, ()))
        self.background = FixedNoise()

    def timestep(self, n: int, step: int, total_steps: int) -> Tensor:
        """Deterministic t: progress p piecewise linear in the fraction of the run done (the knots)."""
        f = min(max(step / max(total_steps, 1), 0.0), 1.0)
        knots = [tuple(map(float, k)) for k in self.cfg.t_knots]
        p = knots[-1][1]
        for (f0, p0), (f1, p1) in zip(knots, knots[1:]):
            if f <= f1:
                p = p0 + (p1 - p0) * (f - f0) / max(f1 - f0, 1e-12)
                break
        t_lo, t_hi = self.core.t_fractions(step)
        t = int(self.core.T * (t_lo + (t_hi - t_lo) * (1 - p)))
        t = min(max(t, 1), self.core.T - 1)
        return torch.full((n,), t, dtype=torch.long, device=self.core.alphas_cumprod.device)

    def consistent_noise(self, inp: LossInput, step: int) -> Tensor:
        """ε_det = o·n(p) + √(1 − o²)·b at the latent resolution; refreshes the background b first."""
        x = inp.x
        size = x.shape[-2:]
        pts = torch.nan_to_num(inp.points).permute(0, 3, 1, 2).float()
        pts = F.interpolate(pts, size=size, mode="area").permute(0, 2, 3, 1)
        if inp.opacity is None:
            o = torch.ones(x.shape[0], 1, *size, device=x.device, dtype=x.dtype)
        else:
            o = F.interpolate(inp.opacity.permute(0, 3, 1, 2).float(), size=size, mode="area").clamp(0, 1).to(x)
        gamma = scheduled(self.cfg.gamma, step)
        bg = self.background(x.shape, x)
        bg = math.sqrt(1 - gamma) * bg + math.sqrt(gamma) * torch.randn_like(x)
        self.background.value = bg
        field = noise_field(pts, x.shape[1], self.cfg.noise_cell, int(self.field_seed)).permute(0, 3, 1, 2).to(x)
        return o * field + (1 - o**2).sqrt() * bg

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, b = inp.x, self.core, inp.x.shape[0]
        t = self.timestep(b, inp.step, inp.total_steps)
        xi = torch.randn_like(x)
        consistent = inp.points is not None and self.cfg.sqrt_beta > 0
        if consistent:
            sb = self.cfg.sqrt_beta
            eps = sb * self.consistent_noise(inp, inp.step) + math.sqrt(max(1 - sb**2, 0.0)) * xi
        else:
            eps = xi
        uncond = core.text_embedding(self.cfg.negative_prompt, b) if self.cfg.negative_prompt else inp.uncond
        x_t = core.add_noise(x.detach(), eps, t)
        e_cfg, _, _ = core.eps_cfg(x_t, t, inp.cond, uncond, perp_neg=inp.perp_neg)
        g = core.weight(t, x) * (e_cfg - eps)
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": float(t[0]), "consistent_noise": float(consistent),
                                 "grad_norm": g.norm().item() / b})

