"""Helpers for the loss tests of CDS, DSD, ASyncSD, CFD, RSD, RewardSDS and DDS: an exact Gaussian prior, inputs,
and the update direction g recovered from the surrogate's gradient (∂loss/∂x = weight·g/B)."""

from __future__ import annotations

import torch

from dreamgen.losses.base import LossInput
from dreamgen.testing.gaussian_guidance import GaussianGuidance

SHAPE = (4, 6, 6)


def gaussian_guidance(sigma: float = 0.0, seed: int = 0) -> GaussianGuidance:
    """Data for "a cat" ~ N(μ_cat, σ²I), for "a dog" ~ N(μ_dog, σ²I), for "" ~ N(μ_0, σ²I)."""
    gen = torch.Generator().manual_seed(seed)
    means = {p: torch.randn(SHAPE, generator=gen) for p in ("", "a cat", "a dog")}
    return GaussianGuidance(means, sigma=sigma, image_size=SHAPE[1])


def exact_eps(guidance: GaussianGuidance, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The closed-form ε-prediction of the Gaussian prior, written out independently of the guidance class."""
    ab = guidance.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    mu = emb.reshape(x_t.shape)
    return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * guidance.sigma**2 + 1 - ab)


def loss_input(guidance: GaussianGuidance, b: int = 2, prompt: str = "a cat", seed: int = 1, **kw) -> LossInput:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *SHAPE, generator=gen).requires_grad_(True)
    cond = guidance.encode_text([prompt]).expand(b, -1)
    uncond = guidance.encode_text([""]).expand(b, -1)
    return LossInput(x=x, cond=cond, uncond=uncond, **kw)


def run(loss, inp: LossInput, seed: int = 0):
    """Seeded forward + backward; returns (output, g) with g = B·∂loss/∂x / weight."""
    torch.manual_seed(seed)
    inp.x.grad = None
    out = loss(inp)
    out.loss.backward()
    return out, inp.x.grad * inp.x.shape[0] / loss.cfg.weight


def alpha_sigma(guidance: GaussianGuidance, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, s_t), shaped [B,1,1,1]."""
    ab = guidance.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt(), (1 - ab).sqrt()


def doubled_features(x_t: torch.Tensor, guidance) -> torch.Tensor:
    """A linear feature map f = 2·x_t (J = 2I), for the RSD feature plug-in tests."""
    return 2 * x_t.flatten(1)


def pooled_tanh_features(x_t: torch.Tensor, guidance) -> torch.Tensor:
    """A non-linear feature map [B,C,h,w] -> [B,C], for the RSD feature plug-in tests."""
    return torch.tanh(x_t).mean(dim=(2, 3))


RECORDED_REWARDS: list[torch.Tensor] = []


def recorded_sum_reward(inp) -> torch.Tensor:
    """Reward = Σ x̂0 per sample; each call's rewards are appended to RECORDED_REWARDS (RewardSDS tests)."""
    r = inp.x0.flatten(1).sum(1)
    RECORDED_REWARDS.append(r.clone())
    return r


def constant_reward(inp) -> torch.Tensor:
    return torch.zeros(inp.x0.shape[0])
