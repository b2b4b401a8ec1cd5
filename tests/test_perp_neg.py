"""Perp-Neg (Armandpour et al., "Re-imagine the Negative Prompt Algorithm", 2023, arXiv 2304.04968; docs/losses.md):
its prompts and weights per azimuth (PromptSet.perp_neg), the one guidance rule (ScoreCore.eps_guided), and every
loss with a CFG prediction passing it through, on the exact Gaussian prior, the embedded prior and a tiny SD."""

from __future__ import annotations

import math

import pytest
import torch

from dreamgen import registry
from dreamgen.cameras import VIEWS
from dreamgen.config import load_config
from dreamgen.errors import ConfigError
from dreamgen.losses.core import LossConfig, ScoreCore, perp_component
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.prompts import PerpNeg, PromptConfig, PromptSet
from loss_fixtures import (SHAPE, Counting, alpha_sigma, exact_eps, exact_perp_neg_cond, gaussian_guidance, perp,
                           prompt_set, run, view_input)

AZIMUTHS = torch.tensor([0.0, 90.0, 180.0, -45.0, 225.0])


def decay(abc, r: float) -> float:
    a, b, c = abc
    return a * math.exp(-b * r) + c


def noisy(guidance, b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, *SHAPE, generator=gen), torch.randint(20, 980, (b,), generator=gen)


def test_prompts_and_weights_per_azimuth_follow_the_interpolation():
    """0°: the front prompt, its own weight ≈ 0 and the side prompt's −f_sf(0); 90°: the side prompt, the front one
    weighs −f_fsb(1); 180°: the back prompt, side and front weigh −f_sb(0), −f_fsb(0); ±45°, 225° interpolate."""
    guidance = gaussian_guidance()
    prompts = prompt_set(guidance)
    cfg = PromptConfig()
    front, side, back = (prompts.cond_views[VIEWS.index(v)] for v in ("front", "side", "back"))
    pn = prompts.perp_neg(AZIMUTHS)

    expected_cond = [front, side, back, 0.5 * front + 0.5 * side, 0.5 * side + 0.5 * back]
    expected_neg = [(front, side), (side, front), (side, front), (front, side), (side, front)]
    expected_w = [(decay(cfg.perp_neg_f_fs, 1), decay(cfg.perp_neg_f_sf, 0)),
                  (decay(cfg.perp_neg_f_sb, 1), decay(cfg.perp_neg_f_fsb, 1)),
                  (decay(cfg.perp_neg_f_sb, 0), decay(cfg.perp_neg_f_fsb, 0)),
                  (decay(cfg.perp_neg_f_fs, 0.5), decay(cfg.perp_neg_f_sf, 0.5)),
                  (decay(cfg.perp_neg_f_sb, 0.5), decay(cfg.perp_neg_f_fsb, 0.5))]
    for i in range(len(AZIMUTHS)):
        torch.testing.assert_close(pn.cond[i], expected_cond[i])
        assert all(torch.equal(pn.negatives[i, k], expected_neg[i][k]) for k in (0, 1))
        torch.testing.assert_close(pn.weights[i], -torch.tensor(expected_w[i]))
    assert abs(pn.weights[0, 0]) < 1e-3 and pn.weights[0, 1] == pytest.approx(-1.574, abs=1e-3)
    assert pn.weights[2].tolist() == pytest.approx([-0.394, -1.967], abs=1e-3)
    # continuous across 90°: just below, front and side come in the other order with (nearly) the same weights
    below = prompts.perp_neg(torch.tensor([89.999]))
    torch.testing.assert_close(below.weights[0].flip(0), pn.weights[1], atol=1e-3, rtol=0)


def test_overhead_rows_keep_plain_cfg_and_view_free_prompts_are_refused():
    guidance = gaussian_guidance()
    overhead = torch.tensor([VIEWS.index("overhead"), VIEWS.index("side")])
    pn = prompt_set(guidance).perp_neg(torch.tensor([30.0, 30.0]), overhead)
    assert torch.equal(pn.cond[0], prompt_set(guidance).cond_views[VIEWS.index("overhead")])
    assert pn.weights[0].tolist() == [0.0, 0.0] and (pn.weights[1] != 0).all()
    with pytest.raises(ConfigError, match="view_dependent"):
        prompt_set(guidance, view_dependent=False).perp_neg(torch.tensor([0.0]))


def test_zero_weights_are_plain_cfg_bit_for_bit():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    core = ScoreCore(guidance, LossConfig(guidance_scale=7.5))
    x_t, t = noisy(guidance, len(AZIMUTHS))
    pn = prompts.perp_neg(AZIMUTHS)
    zero = PerpNeg(pn.cond, pn.negatives, torch.zeros_like(pn.weights))
    uncond = prompts.uncond_batch(len(AZIMUTHS))
    plain, with_zero = core.eps_cfg(x_t, t, pn.cond, uncond), core.eps_cfg(x_t, t, pn.cond, uncond, perp_neg=zero)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_zero))
    assert not torch.equal(core.eps_cfg(x_t, t, pn.cond, uncond, perp_neg=pn)[0], plain[0])


def test_rule_matches_an_independent_recomputation_and_its_term_is_perpendicular_to_dC():
    """E_ω = e_0 + ω·(dC + Σ_k w_k·perp(e_neg_k − e_0, dC)), and ⟨Σ_k w_k·perp(…), dC⟩ = 0 per sample. (This prior's
    ε is affine in the embedding, so halfway between two views, with equal weights, the two terms cancel exactly.)"""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    core = ScoreCore(guidance, LossConfig(guidance_scale=7.5))
    azimuths = torch.tensor([0.0, 30.0, 100.0, 180.0, -150.0])  # not halfway between two views, see below
    x_t, t = noisy(guidance, len(azimuths), seed=1)
    pn, uncond = prompts.perp_neg(azimuths), prompts.uncond_batch(len(azimuths))
    e_cfg, e_y_pn, e_0 = core.eps_cfg(x_t, t, pn.cond, uncond, perp_neg=pn)

    expected_e_y = exact_perp_neg_cond(guidance, x_t, t, pn.cond, uncond, pn)
    torch.testing.assert_close(e_y_pn, expected_e_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_cfg, e_0 + 7.5 * (expected_e_y - e_0), rtol=1e-5, atol=1e-4)
    d_c = exact_eps(guidance, x_t, t, pn.cond) - exact_eps(guidance, x_t, t, uncond)
    term = e_y_pn - exact_eps(guidance, x_t, t, pn.cond)
    cos = (term * d_c).flatten(1).sum(1) / (term.flatten(1).norm(dim=1) * d_c.flatten(1).norm(dim=1))
    assert term.flatten(1).norm(dim=1).min() > 1e-2 and cos.abs().max() < 1e-4

    a, b = torch.randn(6, *SHAPE), torch.randn(6, *SHAPE)
    p = perp_component(a, b)
    assert ((p * b).flatten(1).sum(1).abs() < 1e-4 * b.flatten(1).norm(dim=1) ** 2).all()
    torch.testing.assert_close(p, perp(a, b))
    torch.testing.assert_close(perp_component(3 * b, b), torch.zeros_like(b), rtol=0, atol=1e-5)
    assert torch.equal(perp_component(a, torch.zeros_like(b)), a)


def test_negatives_share_the_one_denoiser_call_of_a_step(one_thread):
    counting = Counting(gaussian_guidance(sigma=0.5))
    prompts = prompt_set(counting)
    inp = view_input(counting, prompts, b=3)
    inp.perp_neg = prompts.perp_neg(torch.tensor([10.0, 100.0, -170.0]))
    inp.cond = inp.perp_neg.cond
    run(SDS(SDSConfig(), counting), inp, seed=0)
    assert (counting.calls, counting.rows) == (1, 3 * (2 + 2))


def _inputs(name: str, guidance, prompts: PromptSet):
    """A view-dependent batch for ``name`` (3 particles for RSD, a source for DDS), cond = the Perp-Neg positive;
    returns (input without Perp-Neg, its Perp-Neg prompts)."""
    inp = view_input(guidance, prompts, b=3, n_particles=3 if name == "rsd" else 1)
    pn = prompts.perp_neg(torch.tensor([15.0, 80.0, 150.0]))
    inp.cond = pn.cond
    if name == "dds":
        inp.source_x = torch.randn(inp.x.shape, generator=torch.Generator().manual_seed(5))
        inp.source_cond = prompts.perp_neg(torch.tensor([40.0, 120.0, 170.0])).cond
    return inp, pn


SMALL = {"dsd": {"n_ddim_steps": 2}, "reward-sds": {"n_noises": 4, "path_steps": 2},
         "bsd": {"negative_prompt": "blurry"}, "nfsd": {"negative_prompt": "blurry"}}


@pytest.mark.parametrize("name", sorted(registry.entries("loss")))
def test_every_loss_passes_perp_neg_through(name, one_thread):
    """Zero weights change nothing, bit for bit; the real weights change g (the term reaches the rule)."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    entry = registry.lookup("loss", name)

    def g_with(weights_scale: float | None) -> torch.Tensor:
        inp, pn = _inputs(name, guidance, prompts)
        if weights_scale is not None:
            inp.perp_neg = PerpNeg(pn.cond, pn.negatives, weights_scale * pn.weights)
            if name == "dds":
                src = prompts.perp_neg(torch.tensor([40.0, 120.0, 170.0]))
                inp.source_perp_neg = PerpNeg(src.cond, src.negatives, weights_scale * src.weights)
        torch.manual_seed(0)
        loss = entry.cls(entry.config(**SMALL.get(name, {})), guidance)
        return run(loss, inp, seed=1)[1]

    plain = g_with(None)
    assert torch.equal(g_with(0.0), plain)
    assert (g_with(1.0) - plain).abs().max() > 1e-3


def test_dds_wants_perp_neg_on_both_branches_or_neither():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    inp, pn = _inputs("dds", guidance, prompts)
    inp.perp_neg = pn
    with pytest.raises(Exception, match="source_perp_neg"):
        registry.lookup("loss", "dds").cls(registry.lookup("loss", "dds").config(), guidance)(inp)


def test_presets_of_dsd_and_asd_turn_it_on_as_their_reference_configs():
    for preset, loss in (("dsd", "dsd"), ("asd", "asd")):
        cfg = load_config(preset, [], prompt="a corgi")
        assert cfg.prompts.perp_neg and cfg.loss.name == loss and cfg.loss.guidance_scale == 7.5
    assert not load_config(None, [], prompt="a red cube").prompts.perp_neg


def _independent_cfg(guidance, x_t, t, pn: PerpNeg, uncond, scale):
    """E_ω with Perp-Neg from separate denoiser calls per prompt."""
    with torch.no_grad():
        e_y, e_0 = guidance.predict_noise(x_t, t, pn.cond), guidance.predict_noise(x_t, t, uncond)
        term = sum(pn.weights[:, k].reshape(-1, 1, 1, 1)
                   * perp(guidance.predict_noise(x_t, t, pn.negatives[:, k]) - e_0, e_y - e_0)
                   for k in range(pn.weights.shape[1]))
    return e_0 + scale * (e_y - e_0 + term)


@pytest.fixture(scope="module", params=["shapes", "stable-diffusion"])
def real_guidance(request, tiny_shapes_path, tiny_sd_path):
    """The embedded prior's and Stable Diffusion's guidance classes, with tiny random weights."""
    if request.param == "shapes":
        from dreamgen.guidance.shapes import ShapesGuidance, ShapesGuidanceConfig

        return ShapesGuidance(ShapesGuidanceConfig(weights=str(tiny_shapes_path)))
    from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance

    return StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(tiny_sd_path), local_files_only=True))


def test_works_with_both_guidance_families(real_guidance, one_thread):
    guidance = real_guidance
    prompts = PromptSet(guidance, "a red cube", PromptConfig())
    gen = torch.Generator().manual_seed(0)
    x = guidance.encode_images(torch.rand(2, guidance.image_size, guidance.image_size, 3, generator=gen)).detach()
    t = torch.tensor([300, 700])
    a, s = alpha_sigma(guidance, t)
    x_t = a * x + s * torch.randn(x.shape, generator=gen)
    pn, uncond = prompts.perp_neg(torch.tensor([30.0, 135.0])), prompts.uncond_batch(2)
    core = ScoreCore(guidance, LossConfig(guidance_scale=7.5))
    e_cfg, _, _ = core.eps_cfg(x_t, t, pn.cond, uncond, perp_neg=pn)
    expected = _independent_cfg(guidance, x_t, t, pn, uncond, 7.5)
    # ω = 7.5 scales the prior's batched-against-single rounding (~1e-5, CPU-dependent) to ~1e-4
    torch.testing.assert_close(e_cfg, expected, rtol=1e-4, atol=5e-4)
    assert (e_cfg - core.eps_cfg(x_t, t, pn.cond, uncond)[0]).abs().max() > 1e-2
