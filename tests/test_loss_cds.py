"""CDS (Consistent3D, Wu et al., CVPR 2024, arXiv 2401.09050; docs/losses.md): schedules, the straight-path
invariant, the Gaussian closed form (sign), fixed eps*."""

from __future__ import annotations

import torch

from dreamgen import registry
from dreamgen.losses.cds import CDS, CDSConfig
from dreamgen.losses.sds import SDS, SDSConfig
from loss_fixtures import SHAPE, alpha_sigma, gaussian_guidance, loss_input, run


def test_defaults_and_schedules_are_consistent3ds():
    cfg = CDSConfig()
    assert registry.lookup("loss", "cds").cls is CDS
    assert cfg.weighting == "uniform"
    loss = CDS(cfg, gaussian_guidance())
    torch.manual_seed(0)
    for step, s_expected in ((0, 700), (750, 400), (3000, 100), (9000, 100)):  # √-progress: 750/3000 → p = 0.5
        s, t = loss.timesteps(256, step)
        assert (s == s_expected).all()
        assert ((t - s).min() >= 100) and ((t - s).max() <= 299) and t.max() <= 980
        assert len(t.unique()) > 50  # one gap per sample
    out = loss(loss_input(loss.guidance, step=750))
    assert out.logs["guidance_scale"] == 88.5 and out.logs["s"] == 400  # ω linear 101 → 51 over 3000 steps


def test_point_mass_teacher_gives_zero_for_every_x_where_sds_pulls():
    guidance = gaussian_guidance(sigma=0.0)
    loss = CDS(CDSConfig(grad_clip=None), guidance)
    for seed in range(4):
        inp = loss_input(guidance, b=2, seed=seed, step=500 * seed)
        inp.x.data.mul_(1 + 3 * seed)
        _, g = run(loss, inp, seed=seed)
        _, g_sds = run(SDS(SDSConfig(), guidance), inp, seed=seed)
        assert g_sds.abs().max() > 1.0
        assert g.abs().max() < 1e-5 * g_sds.abs().max() * 101  # zero up to float32 rounding of the ω = 101 terms


def test_gaussian_teacher_closed_form_pulls_toward_the_data():
    """N(μ, σ²I): g = κ·(x + sv_t·eps* − μ_ω), κ = σ²(sv_t − sv_s)/((σ² + sv_t²)(σ² + sv_s²)) > 0."""
    sigma = 0.8
    guidance = gaussian_guidance(sigma=sigma)
    loss = CDS(CDSConfig(grad_clip=None, gap_min=150, gap_max=150, guidance_scale=3.0), guidance)
    inp = loss_input(guidance, b=2)
    _, g = run(loss, inp, seed=3)
    eps_star = loss.shared_noise.value

    a_t, s_t = alpha_sigma(guidance, torch.tensor([850]))
    a_s, s_s = alpha_sigma(guidance, torch.tensor([700]))
    sv_t, sv_s = s_t / a_t, s_s / a_s
    kappa = sigma**2 * (sv_t - sv_s) / ((sigma**2 + sv_t**2) * (sigma**2 + sv_s**2))
    mu_w = guidance.means[""] + 3.0 * (guidance.means["a cube"] - guidance.means[""])
    expected = kappa * (inp.x.detach() + sv_t * eps_star - mu_w)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)

    # descent (x ← x − lr·g) moves z_t = x + sv_t·eps* toward μ_ω; the reference's literal "+grad" would repel
    z = inp.x.detach() + sv_t * eps_star
    assert ((z - 0.1 * g - mu_w).norm() < (z - mu_w).norm()) and ((z + 0.1 * g - mu_w).norm() > (z - mu_w).norm())


def test_shared_noise_is_fixed_across_calls_and_survives_resume():
    guidance = gaussian_guidance(sigma=0.5)
    loss = CDS(CDSConfig(), guidance)
    _, g1 = run(loss, loss_input(guidance, b=3), seed=1)
    first = loss.shared_noise.value.clone()
    assert first.shape == (1, *SHAPE)
    run(loss, loss_input(guidance, b=3, seed=2), seed=7)
    assert torch.equal(loss.shared_noise.value, first)

    resumed = CDS(CDSConfig(), guidance)
    resumed.load_checkpoint_state(loss.checkpoint_state())
    assert torch.equal(resumed.shared_noise.value, first)
    _, g2 = run(resumed, loss_input(guidance, b=3), seed=1)
    torch.testing.assert_close(g2, g1)


def test_grad_clip_bounds_g():
    guidance = gaussian_guidance(sigma=0.8)
    _, g_free = run(CDS(CDSConfig(grad_clip=None), guidance), loss_input(guidance), seed=0)
    _, g = run(CDS(CDSConfig(grad_clip=0.25), guidance), loss_input(guidance), seed=0)
    assert g_free.abs().max() > 0.25
    torch.testing.assert_close(g, g_free.clamp(-0.25, 0.25))
