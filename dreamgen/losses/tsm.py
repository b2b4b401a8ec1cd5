"""TSM — Trajectory Score Matching (Dreamer XL, Miao et al., 2024; LOSSES.md §18).

ISM (§7, :mod:`dreamgen.losses.ism`) with the target moved along the inverted trajectory between s and t:

    μ   = round(s + (t − s)·√(1 − γ²))
    x_μ = DDIM-step(x_s: s → μ)        with e_0(x_s, s), the same unconditional step that gives x_t
    g   = λ_g·sv_t·(E_ω(x_t, t, y) − e_0(x_μ, μ))

γ = 0.3 (reference ``arguments``). γ = 1 gives μ = s, i.e. ISM exactly (no extra NFE); γ = 0 gives μ = t, x_μ = x_t,
i.e. the CSD form λ_g·sv_t·ω·dC at x_t. Everything else, defaults included, is ISM's.
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
