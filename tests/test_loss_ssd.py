"""SSD (Tang et al., 2023, arXiv 2312.09305; docs/losses.md) against the exact Gaussian prior."""

from __future__ import annotations

import pytest
import torch

from dreamgen.errors import ConfigError
from dreamgen.losses.csd import CSD, CSDConfig
from dreamgen.losses.ssd import SSD, SSDConfig
from loss_fixtures import alpha_sigma, exact_eps, fixed_t, gaussian_guidance, loss_input, mu, replay, run


def per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def test_above_threshold_is_csd():
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0)
    _, g = run(SSD(SSDConfig(**fixed_t(101)), g0), inp, seed=3)
    _, g_csd = run(CSD(CSDConfig(**fixed_t(101)), g0), inp, seed=3)
    assert torch.equal(g, g_csd)


def test_below_threshold_keeps_norm_and_is_orthogonal_to_eps():
    """t straddles M = 100 per sample: rows with t ≤ M have ‖g‖ = ‖h‖ = ‖g_CSD‖ and ⟨g, eps⟩ = 0 (r*), the
    others equal CSD."""
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0, b=12)
    cfg = dict(t_min=0.05, t_max=0.15)
    loss = SSD(SSDConfig(**cfg), g0)
    _, g = run(loss, inp, seed=7)
    _, h = run(CSD(CSDConfig(**cfg), g0), inp, seed=7)
    t, eps = replay(loss, inp, seed=7)
    low = t <= 100
    assert low.any() and (~low).any()
    torch.testing.assert_close(g[~low], h[~low])
    torch.testing.assert_close(g[low].flatten(1).norm(dim=1), h[low].flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    cos = per_sample(g, eps) / (g.flatten(1).norm(dim=1) * eps.flatten(1).norm(dim=1))
    assert cos[low].abs().max() < 1e-5
    assert cos[~low].abs().min() > 1e-3  # CSD rows are not orthogonal: the check above is not vacuous


def test_pgc_coefficient():
    """r = ⟨e_y, eps⟩/‖eps‖: g is the positive multiple of e_y − r·eps with norm ‖h‖."""
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0)
    loss = SSD(SSDConfig(r_mode="pgc", **fixed_t(60)), g0)
    _, g = run(loss, inp, seed=1)
    t, eps = replay(loss, inp, seed=1)
    a, s = alpha_sigma(g0, t)
    x_t = a * inp.x.detach() + s * eps
    e_y, e_0 = exact_eps(g0, x_t, t, mu(g0, "a cube")), exact_eps(g0, x_t, t, mu(g0, ""))
    r = (per_sample(e_y, eps) / eps.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    e_tilde = e_y - r * eps
    h_norm = (s**2 * (e_y - e_0)).flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    expected = h_norm * e_tilde / e_tilde.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)


def test_unknown_r_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="r_mode"):
        SSD(SSDConfig(r_mode="bogus"), gaussian_guidance())
