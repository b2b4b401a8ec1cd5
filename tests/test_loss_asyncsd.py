"""Asynchronous Score Distillation (ScaleDreamer, Ma et al., ECCV 2024, arXiv 2407.02040;
docs/losses.md) against the exact Gaussian prior."""

from __future__ import annotations

import torch

from dreamgen import registry
from dreamgen.losses.asyncsd import AsyncSD, AsyncSDConfig
from loss_fixtures import SHAPE, alpha_sigma, exact_eps, gaussian_guidance, loss_input, run


def test_defaults_are_scaledreamers():
    cfg = AsyncSDConfig()
    assert registry.lookup("loss", "asyncsd").cls is AsyncSD
    assert (cfg.guidance_scale, cfg.plus_ratio, cfg.weighting) == (7.5, 0.1, "sds")
    core = AsyncSD(cfg, gaussian_guidance()).core
    assert core.t_range(0) == (500, 980)
    assert core.t_range(12500) == (260, 740)
    assert core.t_range(25000) == (20, 500)


def test_matches_closed_form_with_the_later_target_timestep():
    guidance = gaussian_guidance(sigma=0.5)
    loss = AsyncSD(AsyncSDConfig(t_min=0.3, t_max=0.9), guidance)
    inp = loss_input(guidance, b=3)
    out, g = run(loss, inp, seed=4)

    torch.manual_seed(4)  # replay the loss's draws: t, U, eps
    t = torch.randint(300, 901, (3,))
    t_plus = t + (0.1 * (t - 300).float() * torch.rand(3)).long()
    eps = torch.randn(3, *SHAPE)
    (a, s), (ap, sp) = alpha_sigma(guidance, t), alpha_sigma(guidance, t_plus)
    x = inp.x.detach()
    x_t, x_tp = a * x + s * eps, ap * x + sp * eps
    e_y, e_0 = exact_eps(guidance, x_t, t, inp.cond), exact_eps(guidance, x_t, t, inp.uncond)
    expected = s**2 * (e_0 + 7.5 * (e_y - e_0) - exact_eps(guidance, x_tp, t_plus, inp.cond))

    assert (t_plus > t).any() and (t_plus >= t).all()
    assert out.logs["t_plus"] == t_plus.float().mean().item()
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-5)


def test_plus_ratio_zero_is_the_classifier_direction():
    """r = 0: g = s_t²·(ω − 1)·dC, and for a point mass dC = a_t·(μ_0 − μ_y)/s_t whatever x and eps."""
    guidance = gaussian_guidance(sigma=0.0)
    loss = AsyncSD(AsyncSDConfig(plus_ratio=0.0, t_min=0.5, t_max=0.5), guidance)
    inp = loss_input(guidance, b=2)
    _, g = run(loss, inp, seed=1)
    ab = guidance.alphas_cumprod[500]
    dc = ab.sqrt() * (guidance.means[""] - guidance.means["a cube"]) / (1 - ab).sqrt()
    torch.testing.assert_close(g, ((1 - ab) * 6.5 * dc).expand(2, *SHAPE), rtol=1e-5, atol=1e-5)
