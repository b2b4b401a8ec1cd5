"""TSM — Trajectory Score Matching (Miao, Duan, Ojha, Song, Shah, Long & Ranjan, "Dreamer XL: Towards
High-Resolution Text-to-3D Generation via Trajectory Score Matching", arXiv 2405.11252, 2024; docs/losses.md).

ISM (:mod:`dreamgen.losses.ism`) with the target moved along the inverted trajectory between s and t:

    μ   = round(s + (t − s)·√(1 − γ²))
    x_μ = DDIM-step(x_s: s → μ)        with e_0(x_s, s), the same unconditional step that gives x_t
    g   = λ_g·sv_t·(E_ω(x_t, t, y) − e_0(x_μ, μ))

Defaults of the reference ``arguments/__init__.py``: γ = 0.3 and λ_g = ``lambda_guidance`` = 1.0 (ISM's is 0.1);
everything else is ISM's. γ = 1 gives μ = s, i.e. ISM exactly (no extra NFE); γ = 0 gives μ = t, x_μ = x_t, i.e. the
CSD form λ_g·sv_t·ω·dC at x_t.
Cost: ISM + 1 unconditional NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.losses.ism import ISM, ISMConfig
from dreamgen.registry import register


@dataclass
class TSMConfig(ISMConfig):
    name: str = "tsm"
    gamma: float = 0.3  # γ: where μ sits between s (γ = 1) and t (γ = 0)
    lambda_guidance: float = 1.0  # λ_g (Dreamer XL's; ISM's is 0.1)


@register("loss", "tsm", config=TSMConfig,
          summary="Trajectory Score Matching: ISM with target e_0(x_μ), μ between s and t",
          paper="Dreamer XL (Miao et al., 2024)", state="none", nfe="4 + ceil(s/200)")
class TSM(ISM):
    def target(self, x_s: Tensor, e_s: Tensor, s: Tensor, t: Tensor, uncond: Tensor) -> Tensor:
        mu = torch.round(s + (t - s).float() * math.sqrt(1.0 - self.cfg.gamma**2)).long()
        if bool((mu == s).all()):
            return e_s
        x_mu = self.core.ddim_step(x_s, e_s, s, mu)
        return self.core.eps(x_mu, mu, uncond)
