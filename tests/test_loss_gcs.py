"""GCS (Li et al., ECCV 2024, arXiv 2407.13584; docs/losses.md): schedules, and the gradients of the three losses
against the literal losses differentiated by autograd on the exact Gaussian prior."""

from __future__ import annotations

import torch

from dreamgen import registry
from dreamgen.losses.gcs import GCS, GCSConfig
from loss_fixtures import SHAPE, Counting, alpha_sigma, exact_cfg, exact_eps, gaussian_guidance, loss_input, run


def test_defaults_and_schedules_are_the_references(one_thread):
    cfg = GCSConfig()
    assert registry.lookup("loss", "gcs").cls is GCS
    assert (cfg.guidance_scale, cfg.w_cc, cfg.w_gc, cfg.w_cp, cfg.lambda_guidance) == (7.5, 1.0, 0.5, 0.5, 0.1)
    loss = GCS(cfg, gaussian_guidance())
    assert [loss.interval(k) for k in (0, 750, 1499, 1500, 9000)] == [100, 90, 81, 80, 80]
    assert loss.core.t_range(0) == (500, 980) and loss.core.t_range(1500) == (20, 500)
    torch.manual_seed(0)
    for step in (0, 1500):
        delta = loss.interval(step)
        for _ in range(20):
            t, s, e = loss.timesteps(4, step, 3000)
            assert (t >= delta + 1).all() and torch.equal(s, t - delta) and (t == t[0]).all() and (e == e[0]).all()
            assert (e >= (t - 2 * delta).clamp(min=1)).all() and (e < (t - delta - 10).clamp(min=2)).all()


def _literal_losses(guidance, cfg: GCSConfig, x, rgb, xi, t, s, e, cond, uncond):
    """L_cc, L_gc, L_cp as the reference writes them: ε's without gradient, the latents linear in x, and the
    intermediate quantities (x̂0^∅, x̂0^ω, a_e, the two L_cc end points) for the identities."""
    b = x.shape[0]

    def step(z, eps, frm, to):  # deterministic DDIM step
        (a_f, s_f), (a_to, s_to) = alpha_sigma(guidance, frm), alpha_sigma(guidance, to)
        return a_to * (z - s_f * eps) / a_f + s_to * eps

    def x0(z, eps, tau):
        a, sg = alpha_sigma(guidance, tau)
        return (z - sg * eps) / a

    def e0(z, tau):
        return exact_eps(guidance, z.detach(), tau, uncond)

    def cfg_eps(z, tau):
        return exact_cfg(guidance, z.detach(), tau, cond, uncond, cfg.guidance_scale)

    a_e, s_e = alpha_sigma(guidance, e)
    x_e = a_e * x + s_e * xi
    x_s = step(x_e, e0(x_e, e), e, s)
    x_t = step(x_s, e0(x_s, s), s, t)
    eps_t = cfg_eps(x_t, t)
    x_s_t = step(x_t, eps_t, t, s)
    cc_end, cc_target = step(x_t, e0(x_t, t), t, e), step(x_s_t, e0(x_s_t, s), s, e).detach()
    l_cc = cfg.w_cc * ((cc_end - cc_target) ** 2).sum() / b
    x_e_t = step(x_t, eps_t, t, e)
    x0_cfg = x0(x_e_t, cfg_eps(x_e_t, e), e).detach()
    x0_null = x0(x_e, e0(x_e, e), e)
    l_gc = cfg.w_gc * ((x0_cfg - x0_null) ** 2).sum() / b
    target_rgb = (rgb + guidance.decode(x0_cfg) - guidance.decode(x0_null)).detach()
    l_cp = cfg.w_cp * ((rgb - target_rgb) ** 2).sum() / b
    return l_cc, l_gc, l_cp, dict(x0_cfg=x0_cfg, x0_null=x0_null.detach(), a_e=a_e, cc=(cc_end - cc_target).detach())


def test_gradients_are_those_of_the_literal_losses_and_obey_their_identities(one_thread):
    """∂L_gc/∂x = 2·w_gc·(x̂0^∅ − x̂0^ω)/B and ∂L_cc/∂x = 2·w_cc·a_e·(…)/B by autograd through the literal losses; the
    loss's g (on x) and g_I (on the render) equal λ_g times B times those gradients."""
    guidance = gaussian_guidance(sigma=0.5)
    cfg = GCSConfig(t_min=0.3, t_max=0.7)
    loss = GCS(cfg, guidance)
    inp = loss_input(guidance, b=3, step=700, total_steps=3000)
    inp.rgb = torch.rand(3, SHAPE[1], SHAPE[2], SHAPE[0]).requires_grad_(True)  # this prior decodes to [B,h,w,C]
    out, g = run(loss, inp, seed=4)
    g_rgb = inp.rgb.grad * 3

    t, s, e = (torch.full((3,), int(out.logs[k])) for k in ("t", "s", "e"))
    assert (t - s == loss.interval(700)).all() and (e < s).all()
    xi = loss.noise_pixels.value + cfg.offset_noise * loss.noise_offset.value
    x = inp.x.detach().clone().requires_grad_(True)
    rgb = inp.rgb.detach().clone().requires_grad_(True)
    l_cc, l_gc, l_cp, q = _literal_losses(guidance, cfg, x, rgb, xi, t, s, e, inp.cond, inp.uncond)

    (grad_gc,) = torch.autograd.grad(l_gc, x, retain_graph=True)
    torch.testing.assert_close(grad_gc, 2 * cfg.w_gc * (q["x0_null"] - q["x0_cfg"]) / 3, rtol=1e-5, atol=1e-6)
    (grad_cc,) = torch.autograd.grad(l_cc, x, retain_graph=True)
    torch.testing.assert_close(grad_cc, 2 * cfg.w_cc * q["a_e"] * q["cc"] / 3, rtol=1e-4, atol=1e-6)
    (grad_cp,) = torch.autograd.grad(l_cp, rgb)
    assert grad_gc.abs().max() > 1e-2 and grad_cc.abs().max() > 1e-3 and grad_cp.abs().max() > 1e-2

    torch.testing.assert_close(g, cfg.lambda_guidance * 3 * (grad_cc + grad_gc), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_rgb, cfg.lambda_guidance * 3 * grad_cp, rtol=1e-4, atol=1e-6)
    for name, value in (("l_cc", l_cc), ("l_gc", l_gc), ("l_cp", l_cp)):
        assert abs(out.logs[name] - value.item()) <= 1e-4 * (1 + value.item())


def test_without_a_render_the_pixel_term_is_left_out_and_the_rest_is_unchanged():
    guidance = gaussian_guidance(sigma=0.5)
    with_rgb = loss_input(guidance, b=2)
    with_rgb.rgb = torch.rand(2, SHAPE[1], SHAPE[2], SHAPE[0]).requires_grad_(True)
    out_a, g_a = run(GCS(GCSConfig(), guidance), with_rgb, seed=2)
    out_b, g_b = run(GCS(GCSConfig(), guidance), loss_input(guidance, b=2), seed=2)
    assert torch.equal(g_a, g_b) and "l_cp" in out_a.logs and "l_cp" not in out_b.logs


def test_noise_is_drawn_once_and_resumes_and_a_step_costs_seven_predictions():
    counting = Counting(gaussian_guidance(sigma=0.5))
    loss = GCS(GCSConfig(), counting)
    run(loss, loss_input(counting), seed=1)
    assert (counting.calls, counting.rows) == (5, 7 * 3)  # 7 NFE per sample in 5 batched calls
    first = loss.noise_pixels.value.clone()
    _, g_1 = run(loss, loss_input(counting, seed=2), seed=5)
    assert torch.equal(loss.noise_pixels.value, first)

    resumed = GCS(GCSConfig(), counting)
    resumed.load_checkpoint_state(loss.checkpoint_state())
    _, g_2 = run(resumed, loss_input(counting, seed=2), seed=5)
    assert torch.equal(g_1, g_2)
    fresh = GCS(GCSConfig(fixed_noise=False), counting)
    assert not torch.equal(run(fresh, loss_input(counting, seed=2), seed=5)[1], g_1)
