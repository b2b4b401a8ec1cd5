"""ISM (LucidDreamer, Liang et al., CVPR 2024, arXiv 2311.11284; docs/losses.md) and the core's DDIM inversion
against the exact Gaussian prior."""

from __future__ import annotations

import torch

from dreamgen.losses.core import LossConfig, ScoreCore
from dreamgen.losses.ism import ISM, ISMConfig
from loss_fixtures import Counting, alpha_sigma, fixed_t, gaussian_guidance, loss_input, mu, run


def test_defaults_follow_luciddreamer():
    cfg = ISMConfig()
    assert (cfg.guidance_scale, cfg.lambda_guidance, cfg.per_sample_t) == (7.5, 0.1, False)
    assert cfg.weighting == "sigma_ratio"
    assert (cfg.inversion_step, cfg.max_inversion_steps, cfg.offset_noise) == (200, 5, 0.1)
    loss = ISM(cfg, gaussian_guidance())
    assert loss.core.t_range(0) == (20, 980) and loss.core.t_range(750) == (20, 740)
    assert loss.core.t_range(1500) == (20, 500)
    assert [loss.interval(k) for k in (0, 750, 1500, 9000)] == [100, 90, 80, 80]


def test_ddim_invert_is_exact_for_a_point_mass():
    """For a point mass at μ, DDIM paths are x_t = a_t·μ + s_t·ε with ε constant, whatever the jumps."""
    g0 = gaussian_guidance()
    core = ScoreCore(g0, LossConfig())
    emb = g0.encode_text(["a cube"] * 3)
    eps = torch.randn(3, 4, 5, 5)
    t_from, t_to = torch.tensor([0, 35, 500]), torch.tensor([700, 35, 951])
    a, s = alpha_sigma(g0, t_from)
    x = a * mu(g0, "a cube") + s * eps
    out = core.ddim_invert(x, t_from, t_to, emb, jump=200)
    a, s = alpha_sigma(g0, t_to)
    torch.testing.assert_close(out, a * mu(g0, "a cube") + s * eps, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[1], x[1])  # already at t_to: untouched


def test_point_mass_closed_form():
    """Unconditional point mass: inversion is exact, e_0(x_s, s) = e_0(x_t, t), so for any Δ, t, x and noise
    g = λ_g·(s_t/a_t)·ω·(a_t/s_t)·(μ_∅ − μ_y) = λ_g·ω·(μ_∅ − μ_y)."""
    g0 = gaussian_guidance()
    for step, seed in ((0, 0), (700, 1), (4000, 2)):
        _, g = run(ISM(ISMConfig(), g0), loss_input(g0, step=step), seed=seed)
        expected = (0.1 * 7.5 * (mu(g0, "") - mu(g0, "a cube"))).expand_as(g)
        torch.testing.assert_close(g, expected, rtol=1e-3, atol=1e-4)


def test_zero_interval_is_the_csd_form():
    """Δ = 0, Gaussian prior (σ > 0): dC = s·a·(μ_∅ − μ_y)/(a²σ² + s²) at every point, so
    g = λ_g·(s/a)·ω·dC = λ_g·ω·s²·(μ_∅ − μ_y)/(a²σ² + s²)."""
    g0 = gaussian_guidance(sigma=0.5)
    cfg = ISMConfig(delta_t=0, delta_t_start=0, **fixed_t(430))
    _, g = run(ISM(cfg, g0), loss_input(g0), seed=3)
    a, s = alpha_sigma(g0, torch.tensor([430]))
    expected = 0.1 * 7.5 * s**2 * (mu(g0, "") - mu(g0, "a cube")) / (a**2 * 0.25 + s**2)
    torch.testing.assert_close(g, expected.expand_as(g), rtol=1e-4, atol=1e-5)
    _, g_interval = run(ISM(ISMConfig(**fixed_t(430)), g0), loss_input(g0), seed=3)
    assert (g_interval - g).abs().max() > 1e-2  # Δ > 0 differs: the closed form above is specific


def test_deterministic_without_injected_noise():
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0)
    quiet = ISM(ISMConfig(start_noise=0.0, offset_noise=0.0, **fixed_t(640)), g0)
    assert torch.equal(run(quiet, inp, seed=0)[1], run(quiet, inp, seed=1)[1])
    noisy = ISM(ISMConfig(**fixed_t(640)), g0)
    assert not torch.equal(run(noisy, inp, seed=0)[1], run(noisy, inp, seed=1)[1])


def test_inversion_cost():
    """s = 700: u = max(700 − 200·k, 0); ceil((s − u)/200) inversion calls + e_0(x_s) + the batched CFG pair."""
    counting = Counting(gaussian_guidance(sigma=0.5))
    for k, calls in ((5, 4 + 2), (2, 2 + 2)):
        counting.calls = 0
        cfg = ISMConfig(delta_t=20, delta_t_start=20, max_inversion_steps=k, **fixed_t(720))
        out, _ = run(ISM(cfg, counting), loss_input(counting), seed=0)
        assert counting.calls == calls and out.logs["s"] == 700
