"""The 2-D exact-score lab: its scores are exact, and the registered losses show the known qualitative facts
(SDS collapses; VSD fits with particles but collapses with a camera generator; ESD's spread grows with λ; RSD
repels). Short runs (fixed seeds, 64 particles/cameras, a few hundred Adam steps at a higher lr)."""

from __future__ import annotations

import pytest
import torch

from dreamgen import registry
from dreamgen.errors import ConfigError
from dreamgen.guidance.base import alpha_sigma
from dreamgen.lab2d import (TABLE_BEGIN, TABLE_END, CameraGenerator, Lab2DGuidance, LabResult, LabSkip, Mixture2D,
                            ParticleCloud, esd_camera_trace_ratio, make_target, main_table, plot_name, run_lab,
                            write_report)

FAST = dict(steps=300, lr=3e-2, n_particles=64, seed=0)


def _eps_by_autograd(p: Mixture2D, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """−s·∇log p_t(x_t) of the perturbed mixture, by autograd through torch.distributions."""
    x = x_t.double().clone().requires_grad_(True)
    out = []
    for i in range(len(x)):
        cov = a[i] ** 2 * p.covs.double() + s[i] ** 2 * torch.eye(2, dtype=torch.float64)
        comp = torch.distributions.MultivariateNormal(a[i] * p.means.double(), covariance_matrix=cov)
        mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(p.weights.double()), comp)
        (grad,) = torch.autograd.grad(mix.log_prob(x[i]), x)
        out.append(-s[i] * grad[i])
    return torch.stack(out).float()


def _probe(n: int = 24, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x_t = 2 * torch.randn(n, 2, generator=gen)
    t = torch.randint(1, 1000, (n,), generator=gen)
    lab = Lab2DGuidance(make_target("gaussian"), ParticleCloud(torch.zeros(3, 2)))
    a, s = alpha_sigma(lab.alphas_cumprod, t, x_t)
    return x_t, t, a, s, lab


@pytest.mark.parametrize("target", ["gaussian", "mixture"])
def test_target_eps_is_the_exact_perturbed_score(target):
    x_t, _, a, s, _ = _probe()
    p = make_target(target)
    torch.testing.assert_close(p.eps(x_t, a, s), _eps_by_autograd(p, x_t, a, s), rtol=1e-4, atol=1e-5)


def test_guidance_routes_prompts_and_matches_the_gaussian_formula():
    x_t, t, a, s, lab = _probe()
    emb = lab.encode_text(["target", "", "ugly, blurry"])
    assert emb.flatten().tolist() == [1.0, 0.0, 0.0]
    b = len(x_t)
    e_y = lab.predict_noise(x_t.reshape(b, 2, 1, 1), t, emb[:1].expand(b, 1)).reshape(b, 2)
    p = make_target("gaussian")
    cov_t = a[:, :, None] ** 2 * p.covs + s[:, :, None] ** 2 * torch.eye(2)
    closed = s * torch.linalg.solve(cov_t, x_t - a * p.means).reshape(b, 2)
    torch.testing.assert_close(e_y, closed, rtol=1e-4, atol=1e-5)
    e_0 = lab.predict_noise(x_t.reshape(b, 2, 1, 1), t, emb[1:2].expand(b, 1)).reshape(b, 2)
    torch.testing.assert_close(e_0, s * x_t / (9 * a**2 + s**2), rtol=1e-4, atol=1e-5)  # N(0, 3²I)


def test_particle_score_is_that_of_the_perturbed_empirical_distribution():
    x_t, _, a, s, _ = _probe()
    cloud = ParticleCloud(torch.randn(40, 2, generator=torch.Generator().manual_seed(5)))
    th = cloud.theta.detach()
    empirical = Mixture2D(torch.full((40,), 1 / 40), th, torch.zeros(40, 2, 2))
    torch.testing.assert_close(cloud.score_eps(x_t, a, s, None), _eps_by_autograd(empirical, x_t, a, s),
                               rtol=1e-4, atol=1e-4)


def test_camera_score_is_a_point_mass_with_a_camera_and_the_marginal_without():
    x_t, _, a, s, _ = _probe(n=6)
    gen = CameraGenerator(torch.tensor([0.3, -0.2]), torch.tensor([[1.0, 0.2], [0.4, 0.7]]))
    c = torch.randn(6, 2, generator=torch.Generator().manual_seed(9))
    camera = torch.cat([c, torch.ones(6, 1)], 1)
    camera[3:] = 0  # the losses' null camera
    g = gen.m.detach() + c @ gen.B.detach().T
    marginal = Mixture2D.gaussian(gen.m.detach(), gen.B.detach() @ gen.B.detach().T)
    e = gen.score_eps(x_t, a, s, camera)
    torch.testing.assert_close(e[:3], (x_t[:3] - a[:3] * g[:3]) / s[:3])
    torch.testing.assert_close(e[3:], _eps_by_autograd(marginal, x_t[3:], a[3:], s[3:]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gen.score_eps(x_t, a, s, None), marginal.eps(x_t, a, s))


def test_exact_particle_score_has_no_parameters_so_theta_is_not_trained_by_the_lora_step():
    cloud = ParticleCloud(torch.zeros(4, 2))
    lab = Lab2DGuidance(make_target("gaussian"), cloud)
    loss = registry.lookup("loss", "vsd").cls(registry.lookup("loss", "vsd").config(), lab)
    assert not loss.particle_score.trainable
    assert list(loss.parameters()) == []


def test_sds_collapses_and_vsd_fits_with_particles():
    sds = run_lab("sds", "particles", **FAST)
    vsd = run_lab("vsd", "particles", **FAST)
    assert sds.trace_ratio < 0.1
    assert 0.7 < vsd.trace_ratio < 1.3
    assert vsd.mean_error < 0.2


def test_camera_generator_vsd_collapses_like_sds_and_esd_spreads_with_lambda():
    sds = run_lab("sds", "camera", **FAST)
    vsd = run_lab("vsd", "camera", **FAST)
    assert sds.trace_ratio < 0.1 and vsd.trace_ratio < 0.1
    ratios = [run_lab("esd", "camera", loss_overrides={"lambda_entropy": lam}, **FAST).trace_ratio
              for lam in (0.5, 0.75, 1.0)]
    assert ratios[0] < ratios[1] - 0.15 and ratios[1] < ratios[2] - 0.3
    assert 0.8 < ratios[2] < 1.2
    # the stationary spread the closed-form analysis predicts (eigen-direction by eigen-direction)
    assert ratios[1] == pytest.approx(esd_camera_trace_ratio(0.75, make_target("gaussian")), abs=0.1)


def test_esd_prediction_collapses_below_its_threshold_and_matches_at_lambda_one():
    p = make_target("gaussian")
    assert esd_camera_trace_ratio(0.0, p) == 0.0
    assert esd_camera_trace_ratio(1.0, p) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 < esd_camera_trace_ratio(0.5, p) < esd_camera_trace_ratio(0.75, p) < 1.0
    # the surrogate on x_t (w = a·s²) spreads more at λ = 0.5 and still fits at λ = 1
    assert esd_camera_trace_ratio(0.5, p, weighting="fantasia3d") > 2 * esd_camera_trace_ratio(0.5, p)
    assert esd_camera_trace_ratio(1.0, p, weighting="fantasia3d") == pytest.approx(1.0, abs=1e-3)


def test_rsd_spreads_particles_more_than_sds():
    if "rsd" not in registry.entries("loss"):
        pytest.skip("rsd is not registered")
    sds = run_lab("sds", "particles", **FAST)
    rsd = run_lab("rsd", "particles", loss_overrides={"gamma": 1.0}, **FAST)
    assert rsd.trace_ratio > sds.trace_ratio + 0.1


def test_mixture_modes_vsd_covers_them_sds_does_not():
    sds = run_lab("sds", "particles", target="mixture", **FAST)
    vsd = run_lab("vsd", "particles", target="mixture", **{**FAST, "steps": 500})
    assert sds.modes_covered <= 1 / 6
    assert vsd.modes_covered >= 5 / 6


def test_learned_mlp_particle_score_is_trained_and_spreads_particles():
    sds = run_lab("sds", "particles", **FAST)
    vsd = run_lab("vsd", "particles", score="mlp", **FAST)
    assert vsd.trace_ratio > sds.trace_ratio + 0.2


def test_bad_names_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="setting"):
        run_lab("sds", "nowhere", steps=1)
    with pytest.raises(ConfigError, match="target"):
        run_lab("sds", target="ring", steps=1)
    with pytest.raises(ConfigError, match="no option 'gama'"):
        run_lab("rsd" if "rsd" in registry.entries("loss") else "sds", loss_overrides={"gama": 1.0}, steps=1)


def test_table_skips_what_the_lab_cannot_give_and_report_keeps_the_hand_written_text(tmp_path):
    rows = main_table(["sds", "dds"], settings=["particles"], targets=["gaussian"], steps=3, n_particles=8)
    assert isinstance(rows[0], LabResult) and isinstance(rows[1], LabSkip)
    assert "edit" in rows[1].reason  # DDS needs a source run
    md = tmp_path / "losses.md"
    md.write_text(f"# intro\n\n{TABLE_BEGIN}\nold\n{TABLE_END}\n\n## discussion\n")
    write_report(rows, md, tmp_path / "lab2d")
    text = md.read_text()
    assert text.startswith("# intro") and text.rstrip().endswith("## discussion") and "old" not in text
    assert f"(lab2d/{plot_name(rows[0])})" in text and "skipped:" in text
    assert (tmp_path / "lab2d" / plot_name(rows[0])).stat().st_size > 1000
