"""Helpers for the CSD, NFSD, SSD, ISM, TSM, BSD and D-SDS tests: an exact Gaussian prior with a few prompts, inputs,
the loss's random draws replayed, and g recovered from the surrogate's gradient (∂loss/∂x = weight·g/B)."""

from __future__ import annotations

import torch

from dreamgen.losses.base import LossInput
from dreamgen.testing.gaussian_guidance import GaussianGuidance
from distill_helpers import alpha_sigma, run  # noqa: F401  (shared by both helper sets)

SHAPE = (4, 5, 5)
PROMPTS = ("", "a cube", "blurry", "ugly")


def guidance(sigma: float = 0.0, seed: int = 0) -> GaussianGuidance:
    """Data for each prompt p of PROMPTS ~ N(μ_p, σ²I); "blurry" and "ugly" serve as negative prompts."""
    gen = torch.Generator().manual_seed(seed)
    return GaussianGuidance({p: torch.randn(SHAPE, generator=gen) for p in PROMPTS}, sigma=sigma, image_size=SHAPE[1])


class Shifted(GaussianGuidance):
    """Every ε-prediction plus a constant tensor."""

    def __init__(self, base: GaussianGuidance, shift: torch.Tensor):
        super().__init__(base.means, sigma=base.sigma, image_size=base.image_size)
        self.shift = shift

    def predict_noise(self, x_t, t, text_emb):
        return super().predict_noise(x_t, t, text_emb) + self.shift


class Counting(GaussianGuidance):
    """Counts denoiser calls (one batched call = one)."""

    def __init__(self, base: GaussianGuidance):
        super().__init__(base.means, sigma=base.sigma, image_size=base.image_size)
        self.calls = 0

    def predict_noise(self, x_t, t, text_emb):
        self.calls += 1
        return super().predict_noise(x_t, t, text_emb)


def mu(g: GaussianGuidance, prompt: str) -> torch.Tensor:
    return g.means[prompt]


def exact_eps(g: GaussianGuidance, x_t: torch.Tensor, t: torch.Tensor, prompt: str) -> torch.Tensor:
    """The Gaussian prior's ε-prediction written out: s·(x_t − a·μ)/(a²σ² + s²)."""
    ab = g.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu(g, prompt)) / (ab * g.sigma**2 + 1 - ab)


def loss_input(g: GaussianGuidance, b: int = 3, prompt: str = "a cube", seed: int = 1, **kw) -> LossInput:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *SHAPE, generator=gen).requires_grad_(True)
    return LossInput(x=x, cond=g.encode_text([prompt] * b), uncond=g.encode_text([""] * b), **kw)


def replay(loss, inp: LossInput, seed: int, offset: float = 0.0):
    """The loss's own draws at this seed: t first, then eps (plus the offset noise where the loss uses it)."""
    torch.manual_seed(seed)
    t = loss.core.sample_t(inp.x.shape[0], inp.step, inp.total_steps)
    return t, loss.core.noise(inp.x, offset)


def fixed_t(t: int) -> dict:
    """Config fields that pin t (as a fraction of T = 1000)."""
    return {"t_min": (t + 0.5) / 1000, "t_max": (t + 0.5) / 1000}
