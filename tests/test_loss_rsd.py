"""RSD (Zilberstein et al., ICLR 2025, arXiv 2406.16683; docs/losses.md): closed form of the kernel repulsion, γ = 0
⇒ SDS, repulsion spreads particles, N ≥ 3."""

from __future__ import annotations

import pytest
import torch

from dreamgen.errors import DreamgenError
from dreamgen.losses.rsd import RSD, RSDConfig
from loss_fixtures import alpha_sigma, exact_eps, gaussian_guidance, loss_input, run, svgd_repulsion


def _replay(guidance, inp, seed, n, lo, hi):
    torch.manual_seed(seed)
    t = torch.randint(lo, hi + 1, (inp.x.shape[0] // n,)).repeat(n)
    eps = torch.randn(inp.x.shape)
    a, s = alpha_sigma(guidance, t)
    x_t = a * inp.x.detach() + s * eps
    e_0 = exact_eps(guidance, x_t, t, inp.uncond)
    sds = s**2 * (e_0 + 100.0 * (exact_eps(guidance, x_t, t, inp.cond) - e_0) - eps)
    return x_t, s, sds


@pytest.fixture(autouse=True)
def allow_fixture_plugins(monkeypatch):
    """These tests name plug-ins from tests/loss_fixtures.py in loss configs: allow that module (as a user would)."""
    monkeypatch.setenv("DREAMGEN_ALLOW_IMPORTS", "loss_fixtures")


def test_gamma_zero_is_sds_and_latent_features_match_closed_form():
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=6, n_particles=3)  # 3 particles × 2 views
    _, g0 = run(RSD(RSDConfig(gamma=0.0), guidance), inp, seed=2)
    x_t, s, sds = _replay(guidance, inp, 2, 3, 20, 980)
    torch.testing.assert_close(g0, sds, rtol=1e-4, atol=1e-4)

    _, g = run(RSD(RSDConfig(gamma=50.0), guidance), inp, seed=2)
    rep = svgd_repulsion(x_t.reshape(3, -1)).reshape(x_t.shape)
    torch.testing.assert_close(g, sds - s**2 * 50.0 * s * rep, rtol=1e-4, atol=1e-4)
    assert (g - g0).abs().max() > 1e-3


def test_feature_plugins_apply_the_jacobian_transpose():
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=4, n_particles=4)
    _, g_latent = run(RSD(RSDConfig(gamma=50.0), guidance), inp, seed=1)
    # f = 2·x_t: the median bandwidth absorbs the scale, so J = 2I gives the same update as f = x_t
    _, g_doubled = run(RSD(RSDConfig(gamma=50.0, features="loss_fixtures:doubled_features"), guidance), inp, seed=1)
    torch.testing.assert_close(g_doubled, g_latent, rtol=1e-4, atol=1e-4)

    _, g = run(RSD(RSDConfig(gamma=50.0, features="loss_fixtures:pooled_tanh_features"), guidance), inp, seed=1)
    x_t, s, sds = _replay(guidance, inp, 1, 4, 20, 980)
    v = svgd_repulsion(torch.tanh(x_t).mean(dim=(2, 3)))  # [4, C]
    jac_t_v = torch.stack([torch.autograd.functional.vjp(lambda z: torch.tanh(z).mean(dim=(1, 2)), x_t[i], v[i])[1]
                           for i in range(4)])
    torch.testing.assert_close(g, sds - s**3 * 50.0 * jac_t_v, rtol=1e-4, atol=1e-4)


def test_repulsion_pushes_three_particles_apart():
    """Identity features, N = 3: a descent step increases every pairwise distance relative to the SDS step."""
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=3, n_particles=3)
    inp.x.data += torch.tensor([-2.0, 0.0, 2.0]).reshape(3, 1, 1, 1)
    cfg = dict(t_min=0.1, t_max=0.1)
    _, g = run(RSD(RSDConfig(gamma=1000.0, **cfg), guidance), inp, seed=0)
    _, g_sds = run(RSD(RSDConfig(gamma=0.0, **cfg), guidance), inp, seed=0)
    lr = 0.05
    step, step_sds = inp.x.detach() - lr * g, inp.x.detach() - lr * g_sds
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert (step[i] - step[j]).norm() > (step_sds[i] - step_sds[j]).norm()


@pytest.mark.parametrize("b,n", [(2, 2), (1, 1), (4, 3)])
def test_needs_three_particles_dividing_the_batch(b, n):
    guidance = gaussian_guidance()
    with pytest.raises(DreamgenError, match="n_particles ≥ 3"):
        RSD(RSDConfig(), guidance)(loss_input(guidance, b=b, n_particles=n))
