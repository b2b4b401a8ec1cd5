"""NFSD (Katzir et al., ICLR 2024, arXiv 2310.17590; docs/losses.md) against the exact Gaussian prior."""

from __future__ import annotations

import torch

from dreamgen.losses.csd import CSD, CSDConfig
from dreamgen.losses.nfsd import NFSD, NFSDConfig
from loss_fixtures import Counting, alpha_sigma, exact_eps, fixed_t, gaussian_guidance, loss_input, mu, replay, run


def test_defaults():
    cfg = NFSDConfig()
    assert (cfg.guidance_scale, cfg.switch_t, cfg.weighting) == (7.5, 200, "sds")
    assert cfg.negative_prompt.startswith("unrealistic, blurry, low quality")


def test_switch_is_exactly_between_199_and_200():
    """The negative prompt has no effect at t = 199; at t = 200 swapping it for another moves g by
    w·(e_B − e_A) = a·s·(μ_A − μ_B) (point masses)."""
    g0 = gaussian_guidance()
    inp = loss_input(g0)
    g_at = {}
    for t in (199, 200):
        for neg in ("blurry", "ugly"):
            g_at[t, neg] = run(NFSD(NFSDConfig(negative_prompt=neg, **fixed_t(t)), g0), inp, seed=1)[1]
    assert torch.equal(g_at[199, "blurry"], g_at[199, "ugly"])
    a, s = alpha_sigma(g0, torch.tensor([200]))
    expected = (a * s * (g0.means["blurry"] - g0.means["ugly"])).expand_as(g_at[200, "blurry"])
    torch.testing.assert_close(g_at[200, "blurry"] - g_at[200, "ugly"], expected, rtol=1e-4, atol=1e-5)


def test_negative_branch_skipped_below_the_switch():
    counting = Counting(gaussian_guidance())
    loss = NFSD(NFSDConfig(negative_prompt="not a known prompt", **fixed_t(150)), counting)
    run(loss, loss_input(counting), seed=0)  # would raise PromptError if the negative prompt were encoded
    assert counting.calls == 1


def test_difference_to_csd_is_w_delta_d_with_no_noise_term():
    """g − g_CSD(s) = w·δ_D, δ_D = e_0 (t < 200) or e_0 − e_neg, per sample, with t on both sides of the switch."""
    g0 = gaussian_guidance(sigma=0.4)
    inp = loss_input(g0, b=16)
    loss = NFSD(NFSDConfig(negative_prompt="blurry"), g0)
    _, g = run(loss, inp, seed=5)
    _, g_csd = run(CSD(CSDConfig(guidance_scale=7.5), g0), inp, seed=5)
    t, eps = replay(loss, inp, seed=5)
    assert (t < 200).any() and (t >= 200).any()

    a, s = alpha_sigma(g0, t)
    x_t = a * inp.x.detach() + s * eps
    late = (t >= 200).float().reshape(-1, 1, 1, 1)
    delta_d = exact_eps(g0, x_t, t, mu(g0, "")) - late * exact_eps(g0, x_t, t, mu(g0, "blurry"))
    torch.testing.assert_close(g - g_csd, s**2 * delta_d, rtol=1e-4, atol=1e-5)
