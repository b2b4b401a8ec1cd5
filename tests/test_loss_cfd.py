"""CFD (Yan et al., ICLR 2025, arXiv 2501.05445; docs/losses.md): t schedule, √β = 0 ⇒ SDS(σ/α), the 3-D noise
field's consistency, N(0, 1) marginals."""

from __future__ import annotations

import math

import torch

from dreamgen import registry
from dreamgen.losses.cfd import CFD, CFDConfig, noise_field
from loss_fixtures import SHAPE, alpha_sigma, exact_cfg, gaussian_guidance, loss_input, run


def _geometry(b: int, seed: int = 0):
    """Random surface points in [-1, 1]³ and opacities, at the latent resolution [b, 6, 6]."""
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(b, SHAPE[1], SHAPE[2], 3, generator=gen) * 2 - 1
    opacity = torch.rand(b, SHAPE[1], SHAPE[2], 1, generator=gen)
    return points, opacity


def test_defaults_and_deterministic_t_schedule():
    cfg = CFDConfig()
    assert registry.lookup("loss", "cfd").cls is CFD
    assert (cfg.guidance_scale, cfg.weighting, cfg.sqrt_beta) == (71.0, "sigma_ratio", 1.0)
    loss = CFD(cfg, gaussian_guidance())
    ts = [int(loss.timestep(1, step, 25000)) for step in (0, 2500, 7500, 25000, 30000)]
    assert ts == [980, 692, 548, 211, 211]  # p = 0, 0.3, 0.45, 0.8, 0.8


def test_sqrt_beta_zero_and_missing_points_are_sds_with_sigma_over_alpha_weight():
    guidance = gaussian_guidance(sigma=0.5)
    points, opacity = _geometry(2)
    for cfg, pts in ((CFDConfig(sqrt_beta=0.0), points), (CFDConfig(), None)):
        inp = loss_input(guidance, b=2, step=2500, total_steps=25000, points=pts, opacity=opacity)
        out, g = run(CFD(cfg, guidance), inp, seed=3)
        torch.manual_seed(3)
        xi = torch.randn(2, *SHAPE)
        t = torch.tensor([692, 692])
        a, s = alpha_sigma(guidance, t)
        expected = s / a * (exact_cfg(guidance, a * inp.x.detach() + s * xi, t, inp.cond, inp.uncond, 71.0) - xi)
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
        assert out.logs["consistent_noise"] == 0.0


def test_consistent_update_matches_closed_form():
    """ε_c = √β·(o·n(p) + √(1 − o²)·b) + √(1 − β)·ξ, b = √(1 − γ)·b₀ + √γ·ξ'."""
    guidance = gaussian_guidance(sigma=0.5)
    points, opacity = _geometry(2)
    loss = CFD(CFDConfig(sqrt_beta=0.6, gamma=0.25), guidance)
    inp = loss_input(guidance, b=2, step=0, total_steps=100, points=points, opacity=opacity)
    out, g = run(loss, inp, seed=4)
    torch.manual_seed(4)
    xi, bg0, xi_bg = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    bg = math.sqrt(0.75) * bg0 + 0.5 * xi_bg
    o = opacity.permute(0, 3, 1, 2)
    field = noise_field(points, SHAPE[0], 0.02, int(loss.field_seed)).permute(0, 3, 1, 2)
    eps = 0.6 * (o * field + (1 - o**2).sqrt() * bg) + 0.8 * xi
    t = torch.tensor([980, 980])
    a, s = alpha_sigma(guidance, t)
    expected = s / a * (exact_cfg(guidance, a * inp.x.detach() + s * eps, t, inp.cond, inp.uncond, 71.0) - eps)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.background.value, bg)
    assert out.logs["consistent_noise"] == 1.0


def test_the_same_surface_point_gets_the_same_noise_in_two_views():
    guidance = gaussian_guidance()
    points, _ = _geometry(2)
    points[1, 3, 2] = points[0, 1, 4]  # one surface point seen by pixel (1,4) of view 0 and (3,2) of view 1
    opacity = torch.ones(2, SHAPE[1], SHAPE[2], 1)
    loss = CFD(CFDConfig(), guidance)
    inp = loss_input(guidance, b=2, points=points, opacity=opacity)
    eps_det = loss.consistent_noise(inp, step=0)
    torch.testing.assert_close(eps_det[1, :, 3, 2], eps_det[0, :, 1, 4], rtol=0, atol=0)
    assert (eps_det[1, :, 0, 0] - eps_det[0, :, 0, 0]).abs().max() > 1e-3  # different points: different noise

    resumed = CFD(CFDConfig(), guidance)  # a fresh run draws another field; a resumed one keeps it
    assert int(resumed.field_seed) != int(loss.field_seed)
    resumed.load_checkpoint_state(loss.checkpoint_state())
    torch.manual_seed(0)
    again = resumed.consistent_noise(inp, step=0)[:, :, 1:, :]  # the background refreshed: compare object pixels
    torch.manual_seed(0)
    torch.testing.assert_close(loss.consistent_noise(inp, step=0)[:, :, 1:, :], again)


def test_field_is_standard_normal_and_continuous():
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(20000, 3, generator=gen) * 4 - 2
    n = noise_field(p, 4, 0.02, seed=12345)
    assert n.mean(0).abs().max() < 0.04 and (n.var(0) - 1).abs().max() < 0.05
    kurtosis = (n**4).mean(0)
    assert (kurtosis - 3).abs().max() < 0.25  # Gaussian, not merely unit variance
    far = noise_field(p + 0.02, 4, 0.02, seed=12345)  # one cell away: independent lattice nodes
    assert (n * far).mean().abs() < 0.04
    near = noise_field(p + 1e-5, 4, 0.02, seed=12345)
    assert (n - near).abs().max() < 0.05
    assert not torch.allclose(noise_field(p, 4, 0.02, seed=1), n)


def test_consistent_noise_is_standard_normal_per_pixel_at_any_opacity():
    guidance = gaussian_guidance()
    points, opacity = _geometry(400, seed=3)
    loss = CFD(CFDConfig(), guidance)
    inp = loss_input(guidance, b=400, points=points, opacity=opacity)
    eps_det = loss.consistent_noise(inp, step=0)
    assert eps_det.mean().abs() < 0.03 and (eps_det.var() - 1).abs() < 0.04
    soft = (opacity.permute(0, 3, 1, 2) - 0.5).abs() < 0.2  # half-transparent pixels keep unit variance too
    assert (eps_det[soft.expand_as(eps_det)].var() - 1).abs() < 0.06
