"""The lab's targets: 2-D distributions whose perturbed score is exact, and the closed-form stationary spread of ESD in
the camera setting (the lab is described in ``dreamgen.lab2d`` and docs/losses.md).

    Gaussian N(m, Σ):            ε̂(x_t) = s_t·(a_t²Σ + s_t²I)⁻¹(x_t − a_t·m)
    mixture Σ_k π_k N(m_k, Σ_k): ε̂(x_t) = Σ_k r_k(x_t)·ε̂_k(x_t),  r_k = posterior of component k at x_t
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.guidance.base import alpha_sigma

TARGETS = ("gaussian", "mixture")
UNCOND_STD = 3.0  # "" and every non-target prompt map to the uninformative N(0, UNCOND_STD²·I)


def _inv2(m: Tensor) -> tuple[Tensor, Tensor]:
    """[...,2,2] -> (inverse [...,2,2], determinant [...])."""
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    adj = torch.stack([torch.stack([m[..., 1, 1], -m[..., 0, 1]], -1),
                       torch.stack([-m[..., 1, 0], m[..., 0, 0]], -1)], -2)
    return adj / det[..., None, None], det


@dataclass
class Mixture2D:
    """Σ_k π_k N(m_k, Σ_k) in R²; a Gaussian is K = 1, an empirical distribution has Σ_k = 0."""

    weights: Tensor  # [K], sums to 1
    means: Tensor  # [K,2]
    covs: Tensor  # [K,2,2]

    @classmethod
    def gaussian(cls, mean: Tensor, cov: Tensor) -> "Mixture2D":
        return cls(mean.new_ones(1), mean.reshape(1, 2), cov.reshape(1, 2, 2))

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """[2,2] covariance of the whole mixture."""
        d = self.means - self.mean
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def eps(self, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """Exact ε-prediction of the perturbed mixture. x_t: [B,2], a, s: [B,1] -> [B,2] (computed in float64)."""
        x_t, a, s = x_t.double(), a.double()[:, :, None], s.double()[:, :, None]
        means, covs = self.means.double(), self.covs.double()
        cov_t = a[..., None] ** 2 * covs + s[..., None] ** 2 * torch.eye(2, dtype=torch.float64)  # [B,K,2,2]
        inv, det = _inv2(cov_t)
        diff = x_t[:, None, :] - a * means  # [B,K,2]
        u = (inv @ diff[..., None]).squeeze(-1)  # Σ_t⁻¹(x_t − a·m_k)
        logp = self.weights.double().log() - 0.5 * (diff * u).sum(-1) - 0.5 * det.log()  # [B,K]
        r = torch.softmax(logp, dim=1)
        return (s[:, 0] * (r[..., None] * u).sum(1)).float()

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """[n,2] samples."""
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=gen)
        chol = torch.linalg.cholesky(self.covs + 1e-12 * torch.eye(2))
        z = torch.randn(n, 2, generator=gen)
        return self.means[k] + (chol[k] @ z[..., None]).squeeze(-1)

    def modes_covered(self, pts: Tensor, radius: float = 3.0, share: float = 0.5) -> float:
        """Fraction of components holding ≥ ``share``·π_k of ``pts`` [N,2] within Mahalanobis distance ``radius``."""
        inv, _ = _inv2(self.covs)
        d = pts[:, None, :] - self.means  # [N,K,2]
        maha2 = (d * (inv @ d[..., None]).squeeze(-1)).sum(-1)
        inside = (maha2 <= radius**2).float().mean(0)  # [K]
        return (inside >= share * self.weights).float().mean().item()


def make_target(name: str) -> Mixture2D:
    """``gaussian``: N([0.5, 0.5], AAᵀ), A = [[1.5, 0], [1, 0.8]] (eigenvalues 3.48, 0.41); ``mixture``: 6 equal
    modes N(·, 0.25²I) on a hexagon of radius 2 around [0.5, 0.5]."""
    centre = torch.tensor([0.5, 0.5])
    if name == "gaussian":
        a = torch.tensor([[1.5, 0.0], [1.0, 0.8]])
        return Mixture2D.gaussian(centre, a @ a.T)
    if name == "mixture":
        ang = torch.arange(6) * (2 * math.pi / 6)
        means = centre + 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return Mixture2D(torch.full((6,), 1 / 6), means, 0.25**2 * torch.eye(2).expand(6, 2, 2).clone())
    raise ConfigError(f"unknown lab target {name!r}; valid: {', '.join(TARGETS)}")


def scaled_linear_alphas() -> Tensor:
    """ᾱ_t [T] of the diffusers ``scaled_linear`` DDPM schedule (Stable Diffusion's, T = 1000)."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return sched.alphas_cumprod.float().clone()


def esd_camera_trace_ratio(lambda_entropy: float, target: Mixture2D, t_min: float = 0.02,
                           t_max: float = 0.98, weighting: str = "sds") -> float:
    """Predicted stationary trace ratio of ESD in the camera setting (Gaussian target, t uniform).

    With x = m + B·c and w = s_t² (``weighting="sds"``, the lab's), E[g·cᵀ] = E_t[s³a·((a²Σ + s²I)⁻¹ −
    λ·(a²BBᵀ + s²I)⁻¹)]·B: along each eigen-direction of Σ (variance σ²) the generator's variance b² stops where
    λ·E_t[s³a/(a²b² + s²)] = E_t[s³a/(a²σ² + s²)], and collapses (b = 0) when even b = 0 gives
    λ·E_t[s·a] ≤ E_t[s³a/(a²σ² + s²)]. λ = 1 gives b² = σ²; λ = 0 (VSD) always collapses. ``weighting="fantasia3d"``
    (w = a_t·s_t²) is the same update with the surrogate loss on x_t instead of x, as in the ESD authors' 2-D script.
    """
    if weighting not in ("sds", "fantasia3d"):
        raise ConfigError(f"unknown weighting {weighting!r} for the ESD analysis; valid: sds, fantasia3d")
    ab = scaled_linear_alphas().double()
    t = torch.arange(int(1000 * t_min), int(1000 * t_max) + 1)
    a, s = alpha_sigma(ab, t, ab[t])
    w = s**3 * a * (a if weighting == "fantasia3d" else 1.0)
    variances = torch.linalg.eigvalsh(target.cov.double())
    fitted = 0.0
    for var in variances.tolist():
        need = (w / (a**2 * var + s**2)).mean()
        pull = lambda b2: lambda_entropy * (w / (a**2 * b2 + s**2)).mean()  # noqa: E731
        if pull(0.0) <= need:
            continue
        lo, hi = 0.0, 100.0 * var
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if pull(mid) > need else (lo, mid)
        fitted += lo
    return fitted / variances.sum().item()
