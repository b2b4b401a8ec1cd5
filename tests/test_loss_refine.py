"""Refine (DreamGaussian's image-space refinement, Tang et al., ICLR 2024, arXiv 2309.16653; docs/losses.md): the
target is the CFG DDIM sample from the noised render, and the update is x − x̂."""

from __future__ import annotations

import torch

from dreamgen import registry
from dreamgen.losses.refine import Refine, RefineConfig
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.testing.gaussian_guidance import GaussianGuidance
from loss_fixtures import SHAPE, alpha_sigma, exact_cfg, fixed_t, gaussian_guidance, loss_input, replay, run


def test_point_mass_at_the_render_gives_zero_and_a_point_mass_elsewhere_pulls_onto_it(one_thread):
    """Every DDIM path of a point mass ends on it: g = x − μ_ω exactly, 0 when the render is the mass."""
    gen = torch.Generator().manual_seed(0)
    render = torch.randn(SHAPE, generator=gen)
    at_render = GaussianGuidance({"": render, "a cube": render}, sigma=0.0, image_size=SHAPE[1])
    inp = loss_input(at_render, b=64)
    inp.x = render.expand(64, *SHAPE).clone().requires_grad_(True)
    _, g = run(Refine(RefineConfig(), at_render), inp, seed=1)
    assert g.abs().max() < 1e-4

    guidance = gaussian_guidance(sigma=0.0)
    inp = loss_input(guidance, b=8)
    _, g = run(Refine(RefineConfig(guidance_scale=3.0, n_steps=3), guidance), inp, seed=2)
    mu_w = guidance.means[""] + 3.0 * (guidance.means["a cube"] - guidance.means[""])
    torch.testing.assert_close(g, inp.x.detach() - mu_w, rtol=1e-4, atol=1e-4)


def test_one_step_is_sds_under_the_sigma_ratio_weighting():
    """x − x̂0(x_t) = x − (x_t − s·E_ω)/a = (s/a)·(E_ω − eps): one DDIM step is SDS weighted s_t/a_t."""
    guidance = gaussian_guidance(sigma=0.5)
    inp = loss_input(guidance, b=6)
    _, g = run(Refine(RefineConfig(n_steps=1, guidance_scale=7.5), guidance), inp, seed=5)
    _, g_sds = run(SDS(SDSConfig(guidance_scale=7.5, t_min=0.2, t_max=0.5, weighting="sigma_ratio"), guidance), inp,
                   seed=5)
    torch.testing.assert_close(g, g_sds, rtol=1e-4, atol=1e-4)


def test_target_follows_the_exact_ode_of_a_gaussian_and_the_loss_is_half_the_squared_distance():
    """Many small steps land on the probability-flow ODE's x0, which keeps (x_t − a_t·μ_ω)/√(a_t²σ² + s_t²)
    constant; the loss value is weight·½‖x − x̂‖²/B and ∂loss/∂x = weight·g/B."""
    sigma, w = 0.5, 2.0
    guidance = gaussian_guidance(sigma=sigma)
    inp = loss_input(guidance, b=4)
    loss = Refine(RefineConfig(n_steps=400, guidance_scale=w, weight=3.0, **fixed_t(400)), guidance)
    out, g = run(loss, inp, seed=3)
    t, eps = replay(loss, inp, seed=3)
    a, s = alpha_sigma(guidance, t)
    x_t = a * inp.x.detach() + s * eps
    mu_w = guidance.means[""] + w * (guidance.means["a cube"] - guidance.means[""])
    x0 = mu_w + (x_t - a * mu_w) * sigma / ((a * sigma) ** 2 + s**2).sqrt()
    assert (inp.x.detach() - g - x0).norm() < 5e-3 * x0.norm()
    torch.testing.assert_close(out.loss, 3.0 * 0.5 * (g**2).sum() / 4, rtol=1e-5, atol=1e-5)
    # the closed form can tell the single jump from x_t (x̂0 of the first step) from the path
    first = (x_t - s * exact_cfg(guidance, x_t, t, inp.cond, inp.uncond, w)) / a
    assert (first - x0).norm() > 20 * (inp.x.detach() - g - x0).norm()


def test_registered_with_its_defaults():
    entry = registry.lookup("loss", "refine")
    cfg = RefineConfig()
    assert entry.cls is Refine and entry.config is RefineConfig
    assert (cfg.t_min, cfg.t_max, cfg.n_steps, cfg.guidance_scale) == (0.2, 0.5, 5, 7.5)
