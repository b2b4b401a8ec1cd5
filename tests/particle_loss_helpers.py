"""Shared fixtures for the VSD / ESD / ASD tests: an exact Gaussian prior, prompts, inputs and RNG replay."""

from __future__ import annotations

import io

import torch

from dreamgen.cameras import VIEWS
from dreamgen.losses.base import LossInput
from dreamgen.prompts import PromptConfig, PromptSet, view_prompt
from dreamgen.testing.gaussian_guidance import GaussianGuidance

PROMPT = "a red cube"
SHAPE = (2, 3, 3)
SIGMA = 0.5


def gaussian_guidance(cls=GaussianGuidance) -> GaussianGuidance:
    gen = torch.Generator().manual_seed(1234)
    texts = ["", PROMPT] + [view_prompt(PROMPT, v) for v in VIEWS]
    means = {text: torch.randn(SHAPE, generator=gen) for text in texts}
    return cls(means, sigma=SIGMA)


def prompt_set(guidance, view_dependent: bool = True) -> PromptSet:
    return PromptSet(guidance, PROMPT, PromptConfig(view_dependent=view_dependent))


def loss_input(guidance, prompts: PromptSet, b: int = 2, step: int = 0, n_particles: int = 1,
               with_camera: bool = True) -> LossInput:
    """The same input every call: x, views and cameras come from a private generator."""
    gen = torch.Generator().manual_seed(77)
    x = torch.randn(b, *SHAPE, generator=gen).requires_grad_(True)
    view_idx = torch.randint(0, len(VIEWS), (b,), generator=gen)
    camera = torch.randn(b, 16, generator=gen) if with_camera else None
    return LossInput(x=x, cond=prompts.cond(view_idx), uncond=prompts.uncond_batch(b), step=step, total_steps=10,
                     camera=camera, prompts=prompts, n_particles=n_particles)


def replay_generator_draws(loss, inp: LossInput, seed: int):
    """The (t, eps) that ``loss.forward(inp)`` draws first after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    t = loss.core.sample_t(inp.x.shape[0], inp.step, inp.total_steps)
    eps = torch.randn_like(inp.x)
    return t, eps


def exact_eps(x_t, t, mu_flat, alphas_cumprod):
    """Closed-form ε-prediction for data N(μ, σ²I): s·(x_t − a·μ)/(a²σ² + s²)."""
    ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    mu = mu_flat.reshape(x_t.shape)
    return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * SIGMA**2 + 1 - ab)


def randomise_particle_score(loss, seed: int, std: float = 0.3) -> None:
    """Move ψ away from its zero-initialised correction so that e_ψ(c) ≠ e_ψ(∅cam)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.particle_score.net.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def snapshot(loss) -> dict:
    """A serialised-and-reloaded copy of the loss's checkpoint state (as a run checkpoint would hold it)."""
    buf = io.BytesIO()
    torch.save(loss.checkpoint_state(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def weights(loss) -> list[torch.Tensor]:
    return [p.detach().clone() for p in loss.particle_score.net.trainable_parameters()]


def run(loss, inp: LossInput, seed: int):
    """Forward + backward with a fixed seed; returns (output, g) where g = B·∂loss/∂x."""
    torch.manual_seed(seed)
    out = loss(inp)
    out.loss.backward()
    return out, inp.x.grad * inp.x.shape[0]
