"""RewardSDS (Chachy et al., 2025, arXiv 2503.09601; docs/losses.md) and the built-in rewards of dreamgen.rewards."""

from __future__ import annotations

import pytest
import torch

from dreamgen import registry
from dreamgen.errors import ConfigError
from dreamgen.losses.reward_sds import RewardSDS, RewardSDSConfig
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.rewards import RewardInput, colorfulness, get_reward, prompt_alignment
import loss_fixtures
from loss_fixtures import SHAPE, alpha_sigma, exact_eps, gaussian_guidance, loss_input, run


def _sds_per_noise(guidance, inp, seed, n):
    """Replay the draws (t, then N noises) and return the SDS direction of each noise, [N,B,...]."""
    torch.manual_seed(seed)
    b = inp.x.shape[0]
    t = torch.randint(20, 981, (b,))
    eps = torch.randn(n, b, *SHAPE)
    a, s = alpha_sigma(guidance, t)
    out = []
    for k in range(n):
        x_t = a * inp.x.detach() + s * eps[k]
        e_0 = exact_eps(guidance, x_t, t, inp.uncond)
        out.append(s**2 * (e_0 + 100.0 * (exact_eps(guidance, x_t, t, inp.cond) - e_0) - eps[k]))
    return torch.stack(out)


@pytest.fixture(autouse=True)
def allow_fixture_plugins(monkeypatch):
    """These tests name plug-ins from tests/loss_fixtures.py in loss configs: allow that module (as a user would)."""
    monkeypatch.setenv("DREAMGEN_ALLOW_IMPORTS", "loss_fixtures")


def test_defaults():
    cfg = RewardSDSConfig()
    assert registry.lookup("loss", "reward-sds").cls is RewardSDS
    assert (cfg.n_noises, cfg.strategy, cfg.path_steps, cfg.path_guidance_scale) == (8, "min-max", 15, 7.5)
    assert (cfg.n_max, cfg.n_min, cfg.lambda_max, cfg.lambda_min, cfg.reward) == (2, 2, 0.9, 0.1, "prompt_alignment")


@pytest.mark.parametrize("cfg", [RewardSDSConfig(strategy="none"), RewardSDSConfig(n_noises=1)])
def test_none_or_one_noise_is_sds(cfg):
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=3)
    out, g = run(RewardSDS(cfg, guidance), inp, seed=8)
    _, g_sds = run(SDS(SDSConfig(), guidance), inp, seed=8)
    torch.testing.assert_close(g, g_sds, rtol=0, atol=0)
    assert "reward_mean" not in out.logs


def test_weighted_with_equal_rewards_is_sds_averaged_over_the_noises():
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=2)
    cfg = RewardSDSConfig(n_noises=4, strategy="weighted", reward="loss_fixtures:constant_reward",
                          path_steps=3)
    _, g = run(RewardSDS(cfg, guidance), inp, seed=3)
    torch.testing.assert_close(g, _sds_per_noise(guidance, inp, 3, 4).mean(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["best", "weighted", "min-max"])
def test_strategies_combine_the_noises_by_their_rewards(strategy):
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=2)
    cfg = RewardSDSConfig(n_noises=5, strategy=strategy, n_best=2, reward="loss_fixtures:recorded_sum_reward",
                          path_steps=3, temperature=2.0)
    loss_fixtures.RECORDED_REWARDS.clear()
    out, g = run(RewardSDS(cfg, guidance), inp, seed=4)
    r = loss_fixtures.RECORDED_REWARDS[-1].reshape(5, 2)  # noise-major
    g_n = _sds_per_noise(guidance, inp, 4, 5)
    order = r.argsort(dim=0, descending=True)  # [5, B]: best first
    expected = torch.zeros_like(g)
    for b in range(2):
        best, worst = order[:, b][:2], order[:, b][-2:]
        if strategy == "best":
            expected[b] = g_n[best, b].mean(0)
        elif strategy == "weighted":
            expected[b] = (torch.softmax(r[:, b] / 2.0, 0).reshape(5, 1, 1, 1) * g_n[:, b]).sum(0)
        else:
            expected[b] = 0.9 * g_n[best, b].mean(0) - 0.1 * g_n[worst, b].mean(0)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
    assert r.std() > 0 and out.logs["reward_spread"] > 0


def test_min_max_needs_enough_noises_and_rewards_resolve_by_name_or_path(monkeypatch):
    guidance = gaussian_guidance()
    with pytest.raises(ConfigError, match="n_noises ≥ 4"):
        RewardSDS(RewardSDSConfig(n_noises=3), guidance)
    with pytest.raises(ConfigError, match="unknown reward"):
        get_reward("imagereward")
    monkeypatch.delenv("DREAMGEN_ALLOW_IMPORTS")
    with pytest.raises(ConfigError, match="DREAMGEN_ALLOW_IMPORTS=loss_fixtures dreamgen"):
        get_reward("loss_fixtures:constant_reward")  # code named by a config is not imported by default
    monkeypatch.setenv("DREAMGEN_ALLOW_IMPORTS", "no_such_module,loss_fixtures")
    with pytest.raises(ConfigError, match="cannot import"):
        get_reward("no_such_module:fn")
    assert get_reward("loss_fixtures:constant_reward") is loss_fixtures.constant_reward
    assert get_reward("colorfulness") is colorfulness


def test_prompt_alignment_is_the_diffusion_classifier_log_ratio():
    """Point mass: e_y(x_t) − ε = a·(x0 − μ_y)/s, so r = mean over probes of (a²/s²)(‖x0 − μ_0‖² − ‖x0 − μ_y‖²)/D."""
    guidance = gaussian_guidance(sigma=0.0)
    mu_y, mu_0 = guidance.means["a cat"], guidance.means[""]
    x0 = torch.stack([mu_y, mu_0, 0.5 * (mu_y + mu_0) + 0.1])
    cond, uncond = guidance.encode_text(["a cat"] * 3), guidance.encode_text([""] * 3)
    r = prompt_alignment(RewardInput(guidance.decode(x0), x0, cond, uncond, guidance))
    a, s = alpha_sigma(guidance, torch.tensor([300, 500, 700]))
    ratio = (a**2 / s**2).flatten().mean()
    expected = ratio * (((x0 - mu_0) ** 2).flatten(1).mean(1) - ((x0 - mu_y) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(r, expected, rtol=1e-4, atol=1e-4)
    assert r[0] > r[2] > r[1]


def test_colorfulness_of_grey_and_of_a_saturated_image():
    grey = torch.full((1, 4, 4, 3), 0.5)
    red_green = torch.zeros(1, 4, 4, 3)
    red_green[0, :2, :, 0] = 1.0  # half pure red, half pure green: rg = ±1, yb = 0.5
    red_green[0, 2:, :, 1] = 1.0
    r = colorfulness(RewardInput(torch.cat([grey, red_green]), torch.zeros(2, 1), None, None, None))
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0 + 0.3 * 0.5]))
