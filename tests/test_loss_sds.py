"""SDS (Poole et al., "DreamFusion", ICLR 2023, arXiv 2209.14988; docs/losses.md): the invariants every correct SDS
satisfies, on exact priors: a point mass at the render gives g ≡ 0, the exact score of a Gaussian gives g of mean 0
over x ~ p and eps, g is affine in ω with shared (t, eps), and ∂loss/∂x = weight·g/B."""

from __future__ import annotations

import torch

from dreamgen.losses.base import LossInput
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.testing.gaussian_guidance import GaussianGuidance
from loss_fixtures import (SHAPE, Shifted, alpha_sigma, exact_cfg, exact_eps, gaussian_guidance, loss_input, mu, replay,
                           run)


def _batch(guidance: GaussianGuidance, x: torch.Tensor) -> LossInput:
    b = x.shape[0]
    return LossInput(x=x.clone().requires_grad_(True), cond=guidance.encode_text(["a cube"] * b),
                     uncond=guidance.encode_text([""] * b))


def test_point_mass_at_the_render_gives_zero_for_every_t_and_eps(one_thread):
    """ε(x_t) = (x_t − a_t·x)/s_t for both prompts: E_ω = ε whatever ω, and x_t − a_t·x = s_t·eps, so g = 0."""
    gen = torch.Generator().manual_seed(0)
    render = torch.randn(SHAPE, generator=gen)
    at_render = GaussianGuidance({"": render, "a cube": render}, sigma=0.0, image_size=SHAPE[1])
    _, g = run(SDS(SDSConfig(guidance_scale=100.0), at_render), _batch(at_render, render.expand(256, *SHAPE)), seed=1)
    assert g.abs().max() < 1e-4
    # the same draws on a render 0.1 away from the point mass: g = s_t·a_t·(x − μ) is far from 0
    off = _batch(at_render, (render + 0.1).expand(256, *SHAPE))
    _, g_off = run(SDS(SDSConfig(guidance_scale=100.0), at_render), off, seed=1)
    assert g_off.abs().max() > 1e3 * g.abs().max() + 1e-3


def test_exact_gaussian_score_gives_zero_mean_update(one_thread):
    """x ~ p = N(μ, σ²I) and the exact ε of p (ω = 1): E[ε̂(x_t) | x_t] = E[eps | x_t], so E[g] = 0 at every t.
    Each element's Monte Carlo mean over N samples is within 5 standard errors (σ_g/√N, estimated from the samples)
    of 0; the same statistic finds a score shifted by 0.2."""
    n, sigma = 4096, 0.7
    guidance = gaussian_guidance(sigma=sigma)
    x = mu(guidance, "a cube") + sigma * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(3))
    loss = SDS(SDSConfig(guidance_scale=1.0), guidance)

    def mean_and_standard_error(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = g.flatten(1)
        return flat.mean(0), flat.std(0) / n**0.5

    m, se = mean_and_standard_error(run(loss, _batch(guidance, x), seed=4)[1])
    assert (m.abs() < 5 * se).all()
    shifted = Shifted(guidance, torch.full(SHAPE, 0.2))
    m_s, se_s = mean_and_standard_error(run(SDS(SDSConfig(guidance_scale=1.0), shifted), _batch(shifted, x), seed=4)[1])
    assert (m_s.abs() > 5 * se_s).float().mean() > 0.9


def test_g_is_affine_in_omega_with_shared_t_and_eps():
    """g(ω1) − g(ω2) = w(t)·(ω1 − ω2)·dC, dC = e_y − e_0 at the shared x_t."""
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=6)
    g_of = {w: run(SDS(SDSConfig(guidance_scale=w), guidance), inp, seed=7)[1] for w in (1.0, 7.5, 100.0)}
    t, eps = replay(SDS(SDSConfig(), guidance), inp, seed=7)
    a, s = alpha_sigma(guidance, t)
    x_t = a * inp.x.detach() + s * eps
    d_c = exact_eps(guidance, x_t, t, inp.cond) - exact_eps(guidance, x_t, t, inp.uncond)
    torch.testing.assert_close(g_of[100.0] - g_of[1.0], s**2 * 99.0 * d_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_of[7.5], g_of[1.0] + (6.5 / 99.0) * (g_of[100.0] - g_of[1.0]), rtol=1e-4, atol=1e-4)
    assert d_c.abs().max() > 1e-2


def test_gradient_of_the_surrogate_is_weight_times_g_over_b():
    """g = s_t²·(E_ω(x_t) − eps) recomputed from the replayed draws; ∂loss/∂x = weight·g/B and the loss value is
    weight·0.5·Σg²/B."""
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=4)
    loss = SDS(SDSConfig(guidance_scale=7.5, weight=2.5), guidance)
    torch.manual_seed(2)
    out = loss(inp)
    out.loss.backward()
    t, eps = replay(loss, inp, seed=2)
    a, s = alpha_sigma(guidance, t)
    x_t = a * inp.x.detach() + s * eps
    g = s**2 * (exact_cfg(guidance, x_t, t, inp.cond, inp.uncond, 7.5) - eps)
    torch.testing.assert_close(inp.x.grad, 2.5 * g / 4, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, 2.5 * 0.5 * (g**2).sum() / 4, rtol=1e-5, atol=1e-6)
