"""DSD (Xu et al., 2024, arXiv 2412.06780; docs/losses.md) and the CFG DDIM sampler it shares with RewardSDS
(ScoreCore.ddim_cfg_sample)."""

from __future__ import annotations

import torch

from dreamgen import registry
from dreamgen.losses.dsd import DSD, DSDConfig
from loss_fixtures import (SHAPE, alpha_sigma, exact_cfg, exact_eps, exact_perp_neg_cond, gaussian_guidance,
                           loss_input, mu, prompt_set, run, view_input)


def test_defaults_are_the_dsd_configs():
    cfg = DSDConfig()
    assert registry.lookup("loss", "dsd").cls is DSD
    # the reference's Perp-Neg branch (its shipped config): prediction ω = 7.5, target ω' = 1
    assert (cfg.guidance_scale, cfg.target_guidance_scale) == (7.5, 1.0)
    assert (cfg.plus_ratio, cfg.n_ddim_steps, cfg.t_sampling) == (0.1, 10, "sqrt_anneal")
    core = DSD(cfg, gaussian_guidance()).core
    assert core.t_range(0) == (320, 980)
    assert core.sample_t(2, 0, 100).tolist() == [980, 980] and core.sample_t(2, 25, 100).tolist() == [650, 650]


def test_ddim_cfg_sample_follows_the_exact_ode():
    """Point mass: x̂0 is μ_ω exactly. Gaussian: many small steps land on the probability-flow ODE's solution,
    which keeps (x_t − a_t·μ_ω)/√(a_t²σ² + s_t²) constant."""
    guidance = gaussian_guidance(sigma=0.0)
    inp = loss_input(guidance, b=2)
    core = DSD(DSDConfig(guidance_scale=3.0), guidance).core
    t_from = torch.tensor([999, 600])
    x0 = core.ddim_cfg_sample(inp.x.detach(), t_from, None, inp.cond, inp.uncond, 4)
    mu_w = guidance.means[""] + 3.0 * (guidance.means["a cube"] - guidance.means[""])
    torch.testing.assert_close(x0, mu_w.expand(2, *SHAPE), rtol=1e-4, atol=1e-4)

    sigma = 0.5
    guidance = gaussian_guidance(sigma=sigma)
    core = DSD(DSDConfig(guidance_scale=3.0), guidance).core
    t_to = torch.tensor([300, 100])
    x_to = core.ddim_cfg_sample(inp.x.detach(), t_from, t_to, inp.cond, inp.uncond, 400)
    (a0, s0), (a1, s1) = alpha_sigma(guidance, t_from), alpha_sigma(guidance, t_to)
    spread0, spread1 = ((a0 * sigma) ** 2 + s0**2).sqrt(), ((a1 * sigma) ** 2 + s1**2).sqrt()
    exact = a1 * mu_w + (inp.x.detach() - a0 * mu_w) * spread1 / spread0
    assert (x_to - exact).norm() < 2e-3 * exact.norm()
    coarse = core.ddim_cfg_sample(inp.x.detach(), t_from, t_to, inp.cond, inp.uncond, 2)
    assert (coarse - exact).norm() > 10 * (x_to - exact).norm()  # the test can tell a wrong path


def test_matches_closed_form_of_the_seed_path_for_each_particle():
    """Two particles of two views each: rows 2p, 2p+1 follow particle p's seed x_T^p; path and prediction at ω = 7.5,
    target E_1 = e_y."""
    sigma, w = 0.5, 7.5
    guidance = gaussian_guidance(sigma=sigma)
    loss = DSD(DSDConfig(), guidance)
    inp = loss_input(guidance, b=4, n_particles=2, step=25, total_steps=100)
    out, g = run(loss, inp, seed=6)

    torch.manual_seed(6)  # replay: U for t', then x_T at the first call
    t = torch.full((4,), 650)
    t_p = (t + (0.1 * (t - 320).float() * torch.rand(4)).long()).clamp(max=999)
    seeds = torch.randn(2, *SHAPE)
    assert torch.equal(loss.seed_noise.value, seeds)
    x_T = seeds.repeat_interleave(2, dim=0)
    grid = (999 + (t_p - 999).float()[None] * torch.linspace(0, 1, 11)[:, None]).round().long()  # [11, 4]
    z = x_T
    for k in range(10):
        e = exact_cfg(guidance, z, grid[k], inp.cond, inp.uncond, w)
        (a, s), (a_n, s_n) = alpha_sigma(guidance, grid[k]), alpha_sigma(guidance, grid[k + 1])
        z = a_n * (z - s * e) / a + s_n * e
    eps_hat = exact_cfg(guidance, z, t_p, inp.cond, inp.uncond, w)
    (a_t, s_t), (a_p, s_p) = alpha_sigma(guidance, t), alpha_sigma(guidance, t_p)
    x = inp.x.detach()
    expected = s_t**2 * (exact_cfg(guidance, a_t * x + s_t * eps_hat, t, inp.cond, inp.uncond, w)
                         - exact_cfg(guidance, a_p * x + s_p * eps_hat, t_p, inp.cond, inp.uncond, 1.0))
    assert (t_p > t).all()
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)


def test_t_prime_equal_t_is_the_classifier_direction_in_both_reference_branches():
    """t' = t: g = s_t²·(ω − ω')·dC, and dC = s·a·(μ_∅ − μ_y)/(a²σ² + s²) at any x_t. The defaults (ω, ω') = (7.5, 1)
    and the reference's branch without Perp-Neg, (8.5, 2), give the same 6.5·dC."""
    sigma = 0.5
    guidance = gaussian_guidance(sigma=sigma)
    inp = loss_input(guidance, b=2, step=25, total_steps=100)
    a, s = alpha_sigma(guidance, torch.tensor([650]))
    dc = s * a * (mu(guidance, "") - mu(guidance, "a cube")) / ((a * sigma) ** 2 + s**2)
    for omega, omega_target in ((7.5, 1.0), (8.5, 2.0), (7.5, 7.5)):
        cfg = DSDConfig(plus_ratio=0.0, guidance_scale=omega, target_guidance_scale=omega_target)
        _, g = run(DSD(cfg, guidance), inp, seed=0)
        torch.testing.assert_close(g, (s**2 * (omega - omega_target) * dc).expand(2, *SHAPE), rtol=1e-4, atol=1e-5)


def test_seeds_decide_the_target_and_fixed_seed_is_deterministic():
    """Same (seed, x, t, t') ⇒ same g, also after a resume; another seed x_T ⇒ another target."""
    guidance = gaussian_guidance(sigma=0.5)

    def inp():
        return loss_input(guidance, step=10, total_steps=100)

    loss_a, loss_b = DSD(DSDConfig(), guidance), DSD(DSDConfig(), guidance)
    run(loss_a, inp(), seed=0)  # each run draws its seed x_T at its first call
    run(loss_b, inp(), seed=1)
    _, g_a = run(loss_a, inp(), seed=5)  # seed 5: the same U, hence the same t', for every call below
    _, g_a_again = run(loss_a, inp(), seed=5)
    _, g_b = run(loss_b, inp(), seed=5)
    torch.testing.assert_close(g_a_again, g_a, rtol=0, atol=0)
    assert (g_a - g_b).abs().max() > 1e-2

    resumed = DSD(DSDConfig(), guidance)
    resumed.load_checkpoint_state(loss_a.checkpoint_state())
    _, g_resumed = run(resumed, inp(), seed=5)
    torch.testing.assert_close(g_resumed, g_a, rtol=0, atol=0)



def test_perp_neg_branch_targets_e_y_plus_the_perp_term():
    """The reference's Perp-Neg branch, t' = t: g = s_t²·(E_7.5 − E_1) with Perp-Neg in both, i.e.
    s_t²·6.5·(ẽ_y − e_0), ẽ_y = e_y + Σ_k w_k·perp(e_neg_k − e_0, dC). Every e_p − e_0 of this prior is the same at
    any x_t, so g is known without the seed's path."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    inp = view_input(guidance, prompts, b=3)
    inp.perp_neg = prompts.perp_neg(torch.tensor([20.0, 110.0, -160.0]))
    inp.cond, inp.step, inp.total_steps = inp.perp_neg.cond, 25, 100
    _, g = run(DSD(DSDConfig(plus_ratio=0.0), guidance), inp, seed=0)

    t, z = torch.full((3,), 650), torch.zeros(3, *SHAPE)
    _, s = alpha_sigma(guidance, t)
    e_y_pn = exact_perp_neg_cond(guidance, z, t, inp.cond, inp.uncond, inp.perp_neg)
    expected = s**2 * 6.5 * (e_y_pn - exact_eps(guidance, z, t, inp.uncond))
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
    assert (expected - s**2 * 6.5 * (exact_eps(guidance, z, t, inp.cond) - exact_eps(guidance, z, t, inp.uncond))
            ).abs().max() > 1e-2  # the Perp-Neg term is not negligible here
