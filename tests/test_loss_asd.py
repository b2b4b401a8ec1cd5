"""ASD (Wei et al., CVPR 2024, arXiv 2312.00739; docs/losses.md): VSD's generator, and a discriminator loss that is
VSD's at γ = 0 and linear at γ = −1."""

from __future__ import annotations

import pytest
import torch

from dreamgen.losses.asd import ASD, ASDConfig
from dreamgen.losses.vsd import VSD, VSDConfig
from loss_fixtures import exact_eps, exact_perp_neg_cond, gaussian_guidance, prompt_set, run, view_input, weights


def test_asd_defaults():
    cfg = ASDConfig()  # Perp-Neg, which the reference config also uses, is a prompt option: configs/asd.yaml
    assert (cfg.name, cfg.gamma, cfg.guidance_scale, cfg.lora_guidance_scale) == ("asd", -0.75, 7.5, 1.0)
    assert cfg.t_max == [5000, 0.98, 0.5, 5001]


def test_gamma_zero_is_vsd_exactly_and_gamma_changes_only_the_discriminator():
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    losses = {}
    configs = {"vsd": (VSD, VSDConfig(lora_lr=1e-2)), "asd0": (ASD, ASDConfig(gamma=0.0, lora_lr=1e-2)),
               "asd": (ASD, ASDConfig(lora_lr=1e-2))}
    for name, (loss_cls, cfg) in configs.items():
        torch.manual_seed(0)
        losses[name] = loss_cls(cfg, guidance)
    outs = {name: run(loss, view_input(guidance, prompts), seed=31) for name, loss in losses.items()}
    # The generator runs before the discriminator step, so every g agrees on the first call.
    assert torch.equal(outs["vsd"][1], outs["asd"][1]) and torch.equal(outs["vsd"][1], outs["asd0"][1])
    assert outs["vsd"][0].logs["lora_loss"] == outs["asd0"][0].logs["lora_loss"] != outs["asd"][0].logs["lora_loss"]
    for seed in (32, 33):
        for name, loss in losses.items():
            outs[name] = run(loss, view_input(guidance, prompts), seed)
        assert torch.equal(outs["vsd"][0].loss, outs["asd0"][0].loss)
    assert all(torch.equal(a, b) for a, b in zip(weights(losses["vsd"]), weights(losses["asd0"])))
    assert not all(torch.equal(a, b) for a, b in zip(weights(losses["vsd"]), weights(losses["asd"])))


@pytest.mark.parametrize("perp_neg", [False, True])
def test_gamma_minus_one_makes_the_discriminator_loss_linear_in_e_psi(perp_neg):
    """∂L_D/∂e_ψ = 2(sg(ẽ^pre(x'_t'; y_vd)) − eps')/N, the same at every e_ψ; ẽ^pre is e_y, or with Perp-Neg (the
    reference config's discriminator target) e_y + Σ_k w_k·perp(e_neg_k − e_0, dC)."""
    guidance = gaussian_guidance(sigma=0.5)
    prompts = prompt_set(guidance)
    loss = ASD(ASDConfig(gamma=-1.0), guidance)
    inp = view_input(guidance, prompts, b=3)
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (3,), generator=gen)
    eps = torch.randn(inp.x.shape, generator=gen)
    x_t = loss.core.add_noise(inp.x.detach(), eps, t)
    if perp_neg:
        inp.perp_neg = prompts.perp_neg(torch.tensor([20.0, 110.0, -160.0]))
        inp.cond = inp.perp_neg.cond
        e_real = exact_perp_neg_cond(guidance, x_t, t, inp.cond, inp.uncond, inp.perp_neg)
        assert (e_real - exact_eps(guidance, x_t, t, inp.cond)).abs().max() > 1e-2
    else:
        e_real = exact_eps(guidance, x_t, t, inp.cond)
    expected = 2 * (e_real - eps) / eps.numel()

    values = []
    for scale in (0.0, 1.0, 10.0):
        e_psi = (scale * torch.randn(inp.x.shape, generator=gen)).requires_grad_(True)
        objective = loss.lora_objective(e_psi, eps, x_t, t, inp)
        (grad,) = torch.autograd.grad(objective, e_psi)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
        values.append((e_psi.detach(), objective.detach()))
    (e_a, l_a), (e_b, l_b) = values[1], values[2]
    torch.testing.assert_close(l_b - l_a, (expected * (e_b - e_a)).sum(), rtol=1e-4, atol=1e-5)
