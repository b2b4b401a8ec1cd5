"""ESD (Wang et al., CVPR 2024, arXiv 2401.00909; docs/losses.md): VSD at λ = 0, bit for bit, and affine in λ through
the camera/null-camera score gap."""

from __future__ import annotations

import torch

from dreamgen.losses.esd import ESD, ESDConfig
from dreamgen.losses.vsd import VSD, VSDConfig
from loss_fixtures import (gaussian_guidance, prompt_set, randomise_particle_score, replay, run, snapshot, view_input,
                           weights)


def test_esd_defaults():
    cfg = ESDConfig()
    assert (cfg.name, cfg.lambda_entropy, cfg.guidance_scale, cfg.lora_camera_dropout) == ("esd", 0.5, 7.5, 0.1)
    assert ESD(cfg, gaussian_guidance(sigma=0.5)).lora_scale == 0.5


def test_lambda_zero_is_vsd_exactly_over_several_steps():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    vsd = VSD(VSDConfig(lora_lr=1e-2), guidance)
    torch.manual_seed(0)
    esd = ESD(ESDConfig(lambda_entropy=0.0, lora_lr=1e-2), guidance)
    for step, seed in enumerate((11, 12, 13)):
        out_v, g_v = run(vsd, view_input(guidance, prompts, step=step), seed)
        out_e, g_e = run(esd, view_input(guidance, prompts, step=step), seed)
        assert torch.equal(out_v.loss, out_e.loss) and torch.equal(g_v, g_e)
        assert out_v.logs == out_e.logs
    assert all(torch.equal(a, b) for a, b in zip(weights(vsd), weights(esd)))
    assert not all(torch.equal(a, b) for a, b in zip(weights(vsd), weights(VSD(VSDConfig(), guidance))))


def test_g_is_affine_in_lambda():
    """g(λ) − g(0) = λ·w(t)·(e_ψ(c) − e_ψ(∅cam)), so g(λ) = (1−λ)·g(0) + λ·g(1)."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    torch.manual_seed(0)
    base = ESD(ESDConfig(lambda_entropy=0.0), guidance)
    randomise_particle_score(base, seed=3)
    state = snapshot(base)
    inp = view_input(guidance, prompts, b=3)
    t, eps = replay(base, inp, seed=21)
    x_t = base.core.add_noise(inp.x.detach(), eps, t)
    with torch.no_grad():
        y = prompts.cond_plain(3)
        gap = (base.particle_score.net.predict_noise(x_t, t, y, inp.camera)
               - base.particle_score.net.predict_noise(x_t, t, y, None))
    assert gap.abs().max() > 1e-2

    g = {}
    for lam in (0.0, 0.3, 1.0):
        loss = ESD(ESDConfig(lambda_entropy=lam), guidance)
        loss.load_checkpoint_state(state)
        _, g[lam] = run(loss, view_input(guidance, prompts, b=3), seed=21)
    w = base.core.weight(t, x_t)
    for lam in (0.3, 1.0):
        torch.testing.assert_close(g[lam] - g[0.0], lam * w * gap, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g[0.3], 0.7 * g[0.0] + 0.3 * g[1.0], rtol=1e-4, atol=1e-6)
