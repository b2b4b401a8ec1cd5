"""CSD (Yu et al., ICLR 2024, arXiv 2310.19415; docs/losses.md) against the exact Gaussian prior."""

from __future__ import annotations

import torch

from dreamgen.losses.csd import CSD, CSDConfig
from dreamgen.losses.sds import SDS, SDSConfig
from loss_fixtures import Shifted, alpha_sigma, fixed_t, gaussian_guidance, loss_input, mu, run


def test_paper_form_is_w_dC_in_closed_form():
    """(a_c, a_n, a_∅, a_ε) = (1, 0, −1, 0): for point masses dC = (a/s)(μ_∅ − μ_y), so g = a·s·(μ_∅ − μ_y)."""
    g0 = gaussian_guidance()
    cfg = CSDConfig(**fixed_t(300))
    assert (cfg.cond_coef, cfg.negative_coef, cfg.null_coef, cfg.noise_coef, cfg.guidance_scale) == (1, 0, -1, 0, 1)
    _, g = run(CSD(cfg, g0), loss_input(g0), seed=4)
    a, s = alpha_sigma(g0, torch.tensor([300]))
    expected = (a * s * (mu(g0, "") - mu(g0, "a cube"))).expand_as(g)
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6)


def test_scheduled_coefficients_with_negative_prompt():
    """At step 50 of a_n = [0, −1, −0.5, 100] and a_∅ = [0, 0, −0.5, 100]: a_n = −0.75, a_∅ = −0.25 (sum 0), so
    g = s²·Σ_p a_p·(x_t − a·μ_p)/s = −a·s·Σ_p a_p·μ_p for point masses."""
    g0 = gaussian_guidance()
    cfg = CSDConfig(negative_coef=[0, -1.0, -0.5, 100], null_coef=[0, 0.0, -0.5, 100], negative_prompt="blurry",
                    **fixed_t(600))
    _, g = run(CSD(cfg, g0), loss_input(g0, step=50), seed=0)
    a, s = alpha_sigma(g0, torch.tensor([600]))
    combo = mu(g0, "a cube") - 0.75 * mu(g0, "blurry") - 0.25 * mu(g0, "")
    torch.testing.assert_close(g, (-a * s * combo).expand_as(g), rtol=1e-5, atol=1e-6)


def test_zero_sum_coefficients_ignore_a_constant_shift_of_every_prediction():
    g0 = gaussian_guidance(sigma=0.5)
    shift = torch.randn(4, 5, 5)
    zero_sum = dict(cond_coef=1.0, negative_coef=-0.5, null_coef=-0.5, negative_prompt="ugly")
    inp = loss_input(g0, b=4)
    _, g_plain = run(CSD(CSDConfig(**zero_sum), g0), inp, seed=2)
    _, g_shift = run(CSD(CSDConfig(**zero_sum), Shifted(g0, shift)), inp, seed=2)
    torch.testing.assert_close(g_shift, g_plain, rtol=1e-5, atol=1e-5)

    # a nonzero sum (1, 0, 0, 0) moves g by exactly w·shift: the test would notice a dropped branch
    cond_only = CSDConfig(null_coef=0.0, **fixed_t(400))
    _, g_a = run(CSD(cond_only, g0), inp, seed=2)
    _, g_b = run(CSD(cond_only, Shifted(g0, shift)), inp, seed=2)
    _, s = alpha_sigma(g0, torch.tensor([400]))
    torch.testing.assert_close(g_b - g_a, (s**2 * shift).expand_as(g_a), rtol=1e-4, atol=1e-5)


def test_sds_difference_over_guidance_scale_is_csd():
    """g_SDS(ω) − g_SDS(0) = ω·g_CSD with shared (t, eps), per-sample random t."""
    g0 = gaussian_guidance(sigma=0.3)
    inp = loss_input(g0, b=5)
    _, g7 = run(SDS(SDSConfig(guidance_scale=7.0), g0), inp, seed=9)
    _, g_0 = run(SDS(SDSConfig(guidance_scale=0.0), g0), inp, seed=9)
    out, g_csd = run(CSD(CSDConfig(), g0), inp, seed=9)
    torch.testing.assert_close(g7 - g_0, 7.0 * g_csd, rtol=1e-4, atol=1e-5)
    assert g_csd.abs().max() > 0 and out.logs["grad_norm"] > 0
