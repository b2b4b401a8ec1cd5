"""TSM (Dreamer XL, Miao et al., 2024, arXiv 2405.11252; docs/losses.md): the ISM reductions at γ = 1 and γ = 0."""

from __future__ import annotations

import torch

from dreamgen.losses.ism import ISM, ISMConfig
from dreamgen.losses.tsm import TSM, TSMConfig
from loss_fixtures import Counting, alpha_sigma, fixed_t, gaussian_guidance, loss_input, mu, run


def test_defaults_are_dreamer_xls():
    cfg = TSMConfig()
    assert (cfg.gamma, cfg.lambda_guidance) == (0.3, 1.0) and ISMConfig().lambda_guidance == 0.1


def test_gamma_one_is_ism_exactly():
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0, step=300)
    _, g_tsm = run(TSM(TSMConfig(gamma=1.0), g0), inp, seed=4)
    _, g_ism = run(ISM(ISMConfig(lambda_guidance=1.0), g0), inp, seed=4)
    assert torch.equal(g_tsm, g_ism)


def test_gamma_zero_is_the_csd_form_at_x_t():
    """μ = t: g = λ_g·(s/a)·ω·dC(x_t) = λ_g·ω·s²·(μ_∅ − μ_y)/(a²σ² + s²) for the Gaussian prior, with Δ = 80
    and λ_g = 1."""
    g0 = gaussian_guidance(sigma=0.5)
    _, g = run(TSM(TSMConfig(gamma=0.0, **fixed_t(520)), g0), loss_input(g0, step=2000), seed=2)
    a, s = alpha_sigma(g0, torch.tensor([520]))
    expected = 1.0 * 7.5 * s**2 * (mu(g0, "") - mu(g0, "a cube")) / (a**2 * 0.25 + s**2)
    torch.testing.assert_close(g, expected.expand_as(g), rtol=1e-4, atol=1e-5)


def test_default_gamma_targets_a_point_between_s_and_t():
    """γ = 0.3, t = 520, Δ = 80: μ = round(440 + 80·√0.91) = 516, one extra unconditional call, and a target
    nearer the γ = 0 one (μ = t = 520) than the ISM one (μ = s = 440)."""
    counting = Counting(gaussian_guidance(sigma=0.5))
    inp = loss_input(counting, step=2000)
    g_of = {}
    for gamma in (1.0, 0.3, 0.0):
        counting.calls = 0
        g_of[gamma] = run(TSM(TSMConfig(gamma=gamma, **fixed_t(520)), counting), inp, seed=6)[1]
        assert counting.calls == (5 if gamma == 1.0 else 6)  # 3 inversion calls + e_0(x_s) + CFG (+ e_0(x_μ))
    d_ism, d_csd = (g_of[0.3] - g_of[1.0]).norm(), (g_of[0.3] - g_of[0.0]).norm()
    assert 0 < d_csd < d_ism
