"""BSD (PlacidDreamer, Huang et al., ACM MM 2024, arXiv 2407.13976; docs/losses.md): the min-norm combination's
invariants, and the loss against the exact Gaussian prior."""

from __future__ import annotations

import pytest
import torch

from dreamgen.errors import ConfigError
from dreamgen.losses.bsd import BSD, BSDConfig, min_norm_combination
from loss_fixtures import alpha_sigma, exact_eps, fixed_t, gaussian_guidance, loss_input, mu, replay, run


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def check_min_norm(d: torch.Tensor, g_c: torch.Tensor, g_s: torch.Tensor, tol: float = 1e-4) -> None:
    """d is the minimum-norm point of the segment [g_s, g_c], checked by optimality, not by the formula:
    d − g_s ∥ g_c − g_s with α ∈ [0, 1], and ⟨d, g_c − g_s⟩ = 0 inside, ≥ 0 at α = 0, ≤ 0 at α = 1."""
    diff = (g_c - g_s).flatten(1)
    alpha = dot(d - g_s, g_c - g_s) / (diff**2).sum(1)
    torch.testing.assert_close(d, g_s + alpha.reshape(-1, 1, 1, 1) * (g_c - g_s), rtol=1e-4, atol=1e-5)
    assert ((alpha >= -tol) & (alpha <= 1 + tol)).all()
    slope = dot(d, g_c - g_s) / (diff.norm(dim=1) * d.flatten(1).norm(dim=1))
    inside = (alpha > tol) & (alpha < 1 - tol)
    assert (slope[inside].abs() < 1e-4).all()
    assert (slope[alpha <= tol] >= -1e-4).all() and (slope[alpha >= 1 - tol] <= 1e-4).all()


def test_min_norm_invariants_on_random_pairs():
    gen = torch.Generator().manual_seed(0)
    g_c = torch.randn(64, 2, 3, 3, generator=gen)
    g_s = torch.randn(64, 2, 3, 3, generator=gen) * torch.linspace(0.1, 5, 64).reshape(-1, 1, 1, 1)
    g_c[:8] = 3.0 * g_s[:8]  # parallel pairs: α clips to 0 (d = the shorter g_s)
    d, alpha = min_norm_combination(g_c, g_s)
    a = alpha.flatten()
    assert ((a >= 0) & (a <= 1)).all() and (a == 0).any() and (a == 1).any() and ((a > 0) & (a < 1)).any()
    sq = dot(d, d)
    assert (dot(d, g_c) >= sq - 1e-4 * (1 + sq)).all() and (dot(d, g_s) >= sq - 1e-4 * (1 + sq)).all()
    norms = torch.minimum(g_c.flatten(1).norm(dim=1), g_s.flatten(1).norm(dim=1))
    assert (d.flatten(1).norm(dim=1) <= norms * (1 + 1e-5)).all()
    check_min_norm(d, g_c, g_s)


def test_equal_objectives_give_that_objective():
    g = torch.randn(3, 2, 4, 4)
    d, _ = min_norm_combination(g, g.clone())
    assert torch.equal(d, g)


def test_defaults_and_config_errors():
    cfg = BSDConfig()
    assert (cfg.lambda_c, cfg.lambda_guidance, cfg.smoothing_prompt, cfg.per_sample_t) == (15.0, 0.1, "negative", False)
    assert BSD(cfg, gaussian_guidance()).core.t_range(1500) == (20, 500)
    with pytest.raises(ConfigError, match="smoothing_prompt"):
        BSD(BSDConfig(smoothing_prompt="none"), gaussian_guidance())


@pytest.mark.parametrize("auto", [False, True])
def test_loss_is_weighted_min_norm_point_of_the_objectives(auto):
    """g/(λ_g·w) is the min-norm point of [g_s, g_c], rebuilt from replayed draws and the exact ε-predictions
    with the negative prompt as e_0: g_c = λ_c·dC, g_s = e_0, w = a_t; auto: g_c = dC, g_s = 1.25(e_0 − ξ),
    w = 0.02·‖e_0 − ξ‖·s_t."""
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0, b=4)
    loss = BSD(BSDConfig(lambda_c=18.0, negative_prompt="blurry", auto=auto), g0)
    _, g = run(loss, inp, seed=11)
    t, xi = replay(loss, inp, seed=11, offset=0.1)
    a, s = alpha_sigma(g0, t)
    x_t = a * inp.x.detach() + s * xi
    e_y, e_0 = exact_eps(g0, x_t, t, mu(g0, "a cube")), exact_eps(g0, x_t, t, mu(g0, "blurry"))
    if auto:
        g_c, g_s = e_y - e_0, 1.25 * (e_0 - xi)
        w = 0.02 * (e_0 - xi).flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * s
    else:
        g_c, g_s, w = 18.0 * (e_y - e_0), e_0, a
    check_min_norm(g / (0.1 * w), g_c, g_s)


def test_empty_smoothing_prompt_uses_the_unconditional_branch():
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0)
    _, g_empty = run(BSD(BSDConfig(smoothing_prompt="empty", negative_prompt="unknown", **fixed_t(300)), g0), inp, 2)
    _, g_neg = run(BSD(BSDConfig(negative_prompt="", **fixed_t(300)), g0), inp, 2)
    assert torch.equal(g_empty, g_neg)
