"""VSD (ProlificDreamer, Wang et al., NeurIPS 2023, arXiv 2305.16213; docs/losses.md) against the exact Gaussian
prior: closed forms, the SDS reduction, ψ's isolation, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dreamgen.guidance.base import TrainableScore
from dreamgen.losses.esd import ESD, ESDConfig
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.losses.vsd import VSD, VSDConfig
from dreamgen.testing.gaussian_guidance import GaussianGuidance
from loss_fixtures import (exact_eps, gaussian_guidance, prompt_set, randomise_particle_score, replay, run, snapshot,
                           view_input, weights)


def test_vsd_defaults_are_prolificdreamers():
    cfg = VSDConfig()
    assert (cfg.guidance_scale, cfg.lora_guidance_scale, cfg.lora_lr) == (7.5, 1.0, 1e-4)
    assert cfg.lora_camera_dropout == 0.1
    assert cfg.weighting == "sds" and cfg.lora_steps_per_iter == 1
    loss = VSD(cfg, gaussian_guidance(sigma=0.5))
    assert loss.core.t_range(0) == (20, 980)
    assert loss.core.t_range(5001) == (20, 500)  # the step drop of max_step_percent [5000, 0.98, 0.5, 5001]


def test_generator_matches_closed_form_for_two_particles_sharing_the_score():
    """At init ε_ψ is the plain prompt's exact score: g = w·(E_ω(x_t; μ_vd) − ε*(x_t; μ_plain)), row by row."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    loss = VSD(VSDConfig(), guidance)
    inp = view_input(guidance, prompts, b=4, n_particles=2)
    t, eps = replay(loss, inp, seed=3)
    out, g = run(loss, inp, seed=3)

    ac = guidance.alphas_cumprod
    x_t = ac[t].sqrt().reshape(-1, 1, 1, 1) * inp.x.detach() + (1 - ac[t]).sqrt().reshape(-1, 1, 1, 1) * eps
    e_vd, e_0 = exact_eps(guidance, x_t, t, inp.cond), exact_eps(guidance, x_t, t, inp.uncond)
    e_plain = exact_eps(guidance, x_t, t, prompts.cond_plain(4))
    expected = (1 - ac[t]).reshape(-1, 1, 1, 1) * (e_0 + 7.5 * (e_vd - e_0) - e_plain)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 0.1
    assert "lora_loss" in out.logs and out.logs["lora_loss"] > 0


def test_particle_score_mixes_camera_and_null_camera_with_s_L():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    loss = VSD(VSDConfig(lora_guidance_scale=2.5), guidance)
    randomise_particle_score(loss, seed=5)
    inp = view_input(guidance, prompts, b=3)
    t, eps = replay(loss, inp, seed=4)
    x_t = loss.core.add_noise(inp.x.detach(), eps, t)
    with torch.no_grad():
        y = prompts.cond_plain(3)
        e_c = loss.particle_score.net.predict_noise(x_t, t, y, inp.camera)
        e_free = loss.particle_score.net.predict_noise(x_t, t, y, None)
        e_pre = loss.core.cfg_combine(guidance.predict_noise(x_t, t, inp.cond),
                                      guidance.predict_noise(x_t, t, inp.uncond), 7.5)
    assert (e_c - e_free).abs().max() > 1e-2  # the camera matters, so s_L is exercised
    _, g = run(loss, inp, seed=4)
    expected = loss.core.weight(t, x_t) * (e_pre - (e_free + 2.5 * (e_c - e_free)))
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)


class SampledNoiseScore(TrainableScore):
    """A particle score that predicts a given noise exactly, whatever it is asked (no trainable parameters)."""

    def __init__(self):
        super().__init__()
        self.noise = None

    def predict_noise(self, x_t, t, text_emb, camera):
        return self.noise.repeat(x_t.shape[0] // self.noise.shape[0], 1, 1, 1)


class SampledNoiseGuidance(GaussianGuidance):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.score = SampledNoiseScore()

    def trainable_copy(self, lora_rank, camera_dim=16):
        return self.score


def test_sampled_noise_as_particle_score_is_exactly_sds():
    guidance = gaussian_guidance(sigma=0.5, cls=SampledNoiseGuidance)
    prompts = prompt_set(guidance)
    vsd = VSD(VSDConfig(), guidance)
    sds = SDS(SDSConfig(guidance_scale=7.5, t_max=0.98), guidance)
    inp_v, inp_s = view_input(guidance, prompts), view_input(guidance, prompts)
    _, guidance.score.noise = replay(vsd, inp_v, seed=8)

    out_v, g_v = run(vsd, inp_v, seed=8)
    out_s, g_s = run(sds, inp_s, seed=8)
    assert torch.equal(out_v.loss, out_s.loss) and out_v.loss > 0
    assert torch.equal(g_v, g_s)
    assert "lora_loss" not in out_v.logs  # nothing to train: the step is skipped


def test_g_vanishes_when_particle_score_is_the_pretrained_one_at_omega_one():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance, view_dependent=False)  # the LoRA's prompt is then the pretrained one's
    for omega, vanishes in ((1.0, True), (7.5, False)):
        torch.manual_seed(0)
        loss = VSD(VSDConfig(guidance_scale=omega), guidance)
        _, g = run(loss, view_input(guidance, prompts), seed=2)
        assert (g.abs().max() < 1e-6) == vanishes


def test_particle_score_step_has_no_gradient_path_to_x():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    frozen = VSD(VSDConfig(lora_steps_per_iter=0), guidance)
    randomise_particle_score(frozen, seed=1)
    trained = VSD(VSDConfig(lora_steps_per_iter=3), guidance)
    trained.load_checkpoint_state(snapshot(frozen))
    before = weights(frozen)

    inp_f, inp_t = view_input(guidance, prompts), view_input(guidance, prompts)
    out_f, g_f = run(frozen, inp_f, seed=6)
    out_t, g_t = run(trained, inp_t, seed=6)
    assert torch.equal(g_f, g_t)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(frozen)))
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(trained)))
    params = trained.particle_score.net.trainable_parameters()
    assert all(gr is None for gr in torch.autograd.grad(out_t.loss, params, allow_unused=True))


def test_particle_score_step_fits_the_particles_noise():
    """Training ψ on one fixed particle lowers its denoising loss on held-out (t', eps') draws."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    loss = VSD(VSDConfig(lora_lr=3e-3, lora_camera_dropout=0.0), guidance)
    inp = view_input(guidance, prompts, b=1)
    x0, y = inp.x.detach(), prompts.cond_plain(1)

    gen = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (256,), generator=gen)
    eps = torch.randn(256, *x0.shape[1:], generator=gen)
    x_t = loss.core.add_noise(x0.expand(256, -1, -1, -1), eps, t)

    def held_out() -> float:
        with torch.no_grad():
            e = loss.particle_score.net.predict_noise(x_t, t, y.expand(256, -1), inp.camera.expand(256, -1))
            return F.mse_loss(e, eps).item()

    start = held_out()
    for _ in range(100):
        loss.particle_score_step(x0, y, inp)
    assert held_out() < 0.5 * start


def test_checkpoint_round_trip_resumes_exactly():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    first = VSD(VSDConfig(lora_lr=1e-2), guidance)
    run(first, view_input(guidance, prompts), seed=1)  # the optimiser now has moments
    state = snapshot(first)
    out_a, g_a = run(first, view_input(guidance, prompts), seed=2)

    torch.manual_seed(99)
    resumed = VSD(VSDConfig(lora_lr=1e-2), guidance)
    resumed.load_checkpoint_state(state)
    out_b, g_b = run(resumed, view_input(guidance, prompts), seed=2)
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(g_a, g_b)
    assert out_a.logs["lora_loss"] == out_b.logs["lora_loss"]
    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(resumed)))

    # Restoring the weights alone (a fresh optimiser) does not continue the run: the optimiser state matters.
    weights_only = VSD(VSDConfig(lora_lr=1e-2), guidance)
    fresh_optimiser = weights_only.particle_score.optimizer.state_dict()
    weights_only.load_checkpoint_state({"particle_score": {**state["particle_score"], "optimizer": fresh_optimiser}})
    run(weights_only, view_input(guidance, prompts), seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(weights(first), weights(weights_only)))


def test_vsd_on_a_tiny_stable_diffusion_trains_lora_and_resumes_exactly(tiny_sd_path):
    """The real trainable copy: ψ (LoRA + camera MLP) trains, checkpoints hold only ψ, and a resume is exact."""
    from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
    from dreamgen.losses.base import LossInput

    sd = StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(tiny_sd_path)), "cpu")
    emb = sd.encode_text(["a red cube", ""])
    gen = torch.Generator().manual_seed(0)
    x, camera = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 16, generator=gen)

    def step(loss, seed):
        inp = LossInput(x=x.clone().requires_grad_(True), cond=emb[:1], uncond=emb[1:], camera=camera)
        return run(loss, inp, seed)

    torch.manual_seed(0)
    first = VSD(VSDConfig(lora_lr=1e-3), sd)
    before = weights(first)
    step(first, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(first)))
    state = snapshot(first)
    n_trainable = sum(p.numel() for p in first.particle_score.net.trainable_parameters())
    assert sum(v.numel() for v in state["particle_score"]["weights"].values()) == n_trainable
    assert n_trainable < sum(p.numel() for p in sd.unet.parameters())
    out_a, g_a = step(first, seed=2)

    resumed = VSD(VSDConfig(lora_lr=1e-3), sd)
    resumed.load_checkpoint_state(state)
    out_b, g_b = step(resumed, seed=2)
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(g_a, g_b)
    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(resumed)))


@pytest.mark.parametrize("loss_cls, cfg_cls", [(VSD, VSDConfig), (ESD, ESDConfig)])
def test_particle_score_step_drops_the_camera_with_probability_p(loss_cls, cfg_cls):
    """The ψ step trains on the null camera with probability p per sample: none at p = 0, all at p = 1, and a
    binomial share at p = 0.3 (within 4 standard deviations); the kept rows keep their own camera."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    b = 400
    inp = view_input(guidance, prompts, b=b)
    for p in (0.0, 1.0, 0.3):
        torch.manual_seed(0)
        loss = loss_cls(cfg_cls(lora_camera_dropout=p), guidance)
        seen = []
        net = loss.particle_score.net
        forward = net.predict_noise
        net.predict_noise = lambda x_t, t, emb, camera: seen.append(camera) or forward(x_t, t, emb, camera)
        torch.manual_seed(1)
        loss.particle_score_step(inp.x.detach(), prompts.cond_plain(b), inp)
        (camera,) = seen
        null = (camera == 0).all(dim=1)
        assert torch.equal(camera[~null], inp.camera[~null])
        if p in (0.0, 1.0):
            assert bool(null.all()) == (p == 1.0) and bool(null.any()) == (p == 1.0)
        else:
            assert abs(null.float().mean().item() - p) < 4 * (p * (1 - p) / b) ** 0.5
