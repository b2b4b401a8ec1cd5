"""CDS, DSD, ASyncSD, CFD, RSD, RewardSDS, DDS and GCS on a real (tiny, random) Stable Diffusion guidance: 3-D text
embeddings [B, L, D], VAE latents and decoding. Each g (from ∂loss/∂x = weight·g/B) is compared with the update rule
recomputed here from the loss's replayed draws, calling the tiny UNet directly, one prompt per call."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from dreamgen.losses.asyncsd import AsyncSD, AsyncSDConfig
from dreamgen.losses.base import LossInput
from dreamgen.losses.cds import CDS, CDSConfig
from dreamgen.losses.cfd import CFD, CFDConfig, noise_field
from dreamgen.losses.dds import DDS, DDSConfig
from dreamgen.losses.dsd import DSD, DSDConfig
from dreamgen.losses.gcs import GCS, GCSConfig
from dreamgen.losses.reward_sds import RewardSDS, RewardSDSConfig
from dreamgen.losses.rsd import RSD, RSDConfig
from dreamgen.rewards import RewardInput, prompt_alignment
from loss_fixtures import run, svgd_repulsion

B = 3


@pytest.fixture(scope="module")
def sd(tiny_sd_path):
    return StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(tiny_sd_path), local_files_only=True))


@pytest.fixture
def inp(sd) -> LossInput:
    """Three renders as three particles, their latents x, opacity and surface points, and a source for DDS."""
    gen = torch.Generator().manual_seed(0)
    size = sd.image_size
    rgb = torch.rand(B, size, size, 3, generator=gen).requires_grad_(True)
    x = sd.encode_images(rgb.detach()).detach().contiguous().requires_grad_(True)  # randn_like(x) = randn(x.shape)
    cond, uncond = sd.encode_text(["a red cube", "a blue ball"]), sd.encode_text([""])
    return LossInput(x=x, cond=cond[[0, 0, 0]], uncond=uncond.expand(B, -1, -1), step=10, total_steps=100, rgb=rgb,
                     opacity=torch.rand(B, size, size, 1, generator=gen),
                     points=torch.randn(B, size, size, 3, generator=gen), n_particles=B,
                     source_x=x.detach().flip(0), source_cond=cond[[1, 1, 1]])


# ---- the rules' pieces, written out with direct UNet calls -----------------------------------------------------------

def unet(sd, x_t, t, emb):
    with torch.no_grad():
        return sd.predict_noise(x_t, t, emb)


def cfg(sd, x_t, t, cond, uncond, scale):
    e_0 = unet(sd, x_t, t, uncond)
    return e_0 + scale * (unet(sd, x_t, t, cond) - e_0)


def a_s(sd, t):
    ab = sd.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt(), (1 - ab).sqrt()


def ddim(sd, z, eps, frm, to):
    (a, s), (a_to, s_to) = a_s(sd, frm), a_s(sd, to)
    return a_to * (z - s * eps) / a + s_to * eps


def assert_recomputed(g, expected, tol=2e-3):
    """‖g − expected‖ ≤ tol·‖expected‖ (batched and one-prompt UNet calls differ in float rounding)."""
    assert expected.norm() > 1e-3 and g.shape == expected.shape
    assert (g - expected).norm() <= tol * expected.norm(), ((g - expected).norm() / expected.norm()).item()


def full(t: int) -> torch.Tensor:
    return torch.full((B,), t, dtype=torch.long)


# ---- one test per loss ---------------------------------------------------------------------------------------------

def test_cds(one_thread, sd, inp):
    """s on its √-schedule, t = s + 150, ω and the clip on their schedules; g = clip(E_ω(z_t) − E_ω(ẑ_s))."""
    loss = CDS(CDSConfig(gap_min=150, gap_max=150), sd)
    _, g = run(loss, inp, seed=1)
    s_step = round(700 - 600 * math.sqrt(10 / 3000))
    t, s = full(s_step + 150), full(s_step)
    omega, clip = 101 - 50 * 10 / 3000, 2 + 6 * 10 / 3000
    (a_t, s_t), (a_s_, s_s) = a_s(sd, t), a_s(sd, s)
    sv_t, sv_s = s_t / a_t, s_s / a_s_
    z_t = inp.x.detach() + sv_t * loss.shared_noise.value
    e_t = cfg(sd, z_t / (1 + sv_t**2).sqrt(), t, inp.cond, inp.uncond, omega)
    z_s = z_t + (sv_s - sv_t) * e_t
    e_s = cfg(sd, z_s / (1 + sv_s**2).sqrt(), s, inp.cond, inp.uncond, omega)
    assert_recomputed(g, (e_t - e_s).clamp(-clip, clip))


def test_dsd(one_thread, sd, inp):
    """t on its √-schedule, t' = t + ⌊U·0.1·(t − 320)⌋, each particle's seed x_T taken along a 3-step CFG DDIM path
    to t'; g = s_t²·(E_7.5(x_t) − E_1(x_t'))."""
    _, g = run(DSD(DSDConfig(n_ddim_steps=3), sd), inp, seed=2)
    torch.manual_seed(2)
    t = full(round(980 - 660 * math.sqrt(10 / 100)))
    t_p = (t + (0.1 * (t - 320).float() * torch.rand(B)).long()).clamp(max=999)
    z = torch.randn(B, *inp.x.shape[1:])  # one seed per particle
    grid = (999 + (t_p - 999).float()[None] * torch.linspace(0, 1, 4)[:, None]).round().long()
    for k in range(3):
        z = ddim(sd, z, cfg(sd, z, grid[k], inp.cond, inp.uncond, 7.5), grid[k], grid[k + 1])
    eps_hat = cfg(sd, z, t_p, inp.cond, inp.uncond, 7.5)
    (a, s), (a_p, s_p) = a_s(sd, t), a_s(sd, t_p)
    x = inp.x.detach()
    expected = s**2 * (cfg(sd, a * x + s * eps_hat, t, inp.cond, inp.uncond, 7.5)
                       - cfg(sd, a_p * x + s_p * eps_hat, t_p, inp.cond, inp.uncond, 1.0))
    assert_recomputed(g, expected)


def test_asyncsd(one_thread, sd, inp):
    """g = s_t²·(E_7.5(x_t, t) − e_y(x_t+, t+)) with one eps for both points."""
    _, g = run(AsyncSD(AsyncSDConfig(t_min=0.4, t_max=0.8), sd), inp, seed=3)
    torch.manual_seed(3)
    t = torch.randint(400, 801, (B,))
    t_plus = t + (0.1 * (t - 400).float() * torch.rand(B)).long()
    eps = torch.randn(inp.x.shape)
    (a, s), (a_p, s_p) = a_s(sd, t), a_s(sd, t_plus)
    x = inp.x.detach()
    expected = s**2 * (cfg(sd, a * x + s * eps, t, inp.cond, inp.uncond, 7.5) - unet(sd, a_p * x + s_p * eps, t_plus,
                                                                                     inp.cond))
    assert_recomputed(g, expected)


def test_cfd(one_thread, sd, inp):
    """ε_c = o·n(p) + √(1 − o²)·b (β = 1) at the latent resolution, b the refreshed background; g =
    (s/a)·(E_71(a·x + s·ε_c; y, "blurry") − ε_c) at the deterministic t = 692 (10% of the run)."""
    loss = CFD(CFDConfig(negative_prompt="blurry"), sd)
    _, g = run(loss, inp, seed=4)
    torch.manual_seed(4)
    torch.randn(inp.x.shape)  # ξ: unused at β = 1
    size = inp.x.shape[-2:]
    bg = math.sqrt(0.99) * torch.randn(inp.x.shape) + 0.1 * torch.randn(inp.x.shape)  # γ = 0.01 before step 5000
    pts = F.interpolate(inp.points.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)
    o = F.interpolate(inp.opacity.permute(0, 3, 1, 2), size=size, mode="area").clamp(0, 1)
    field = noise_field(pts, inp.x.shape[1], 0.02, int(loss.field_seed)).permute(0, 3, 1, 2)
    eps = o * field + (1 - o**2).sqrt() * bg
    t = full(692)
    a, s = a_s(sd, t)
    blurry = sd.encode_text(["blurry"]).expand(B, -1, -1)
    assert_recomputed(g, s / a * (cfg(sd, a * inp.x.detach() + s * eps, t, inp.cond, blurry, 71.0) - eps))


def test_rsd(one_thread, sd, inp):
    """Three particles, one t: g_i = s_t²·[E_100(x_t^i) − eps^i − γ·s_t·(SVGD repulsion of the latents x_t)]."""
    _, g = run(RSD(RSDConfig(gamma=10.0), sd), inp, seed=5)
    torch.manual_seed(5)
    t = torch.randint(20, 981, (1,)).repeat(B)
    eps = torch.randn(inp.x.shape)
    a, s = a_s(sd, t)
    x_t = a * inp.x.detach() + s * eps
    repulsion = svgd_repulsion(x_t.reshape(B, -1)).reshape(x_t.shape)
    assert_recomputed(g, s**2 * (cfg(sd, x_t, t, inp.cond, inp.uncond, 100.0) - eps - 10.0 * s * repulsion))


def test_reward_sds(one_thread, sd, inp):
    """Four noises per render, each denoised by a 2-step CFG DDIM path, decoded and scored by prompt_alignment;
    g = 0.9·mean(g^n of the top 2) − 0.1·mean(g^n of the bottom 2), g^n the SDS direction of noise n."""
    _, g = run(RewardSDS(RewardSDSConfig(n_noises=4, path_steps=2), sd), inp, seed=6)
    torch.manual_seed(6)
    t = torch.randint(20, 981, (B,))
    eps = torch.randn(4, *inp.x.shape)
    a, s = a_s(sd, t)
    expected = torch.zeros_like(g)
    rewards, g_n = [], []
    for n in range(4):
        x_t = a * inp.x.detach() + s * eps[n]
        g_n.append(s**2 * (cfg(sd, x_t, t, inp.cond, inp.uncond, 100.0) - eps[n]))
        half = (t.float() / 2).round().long()
        z = ddim(sd, x_t, cfg(sd, x_t, t, inp.cond, inp.uncond, 7.5), t, half)
        a_h, s_h = a_s(sd, half)
        x0 = (z - s_h * cfg(sd, z, half, inp.cond, inp.uncond, 7.5)) / a_h
        rewards.append(prompt_alignment(RewardInput(sd.decode(x0), x0, inp.cond, inp.uncond, sd)))
    r = torch.stack(rewards)  # [4, B]
    for i in range(B):
        order = r[:, i].argsort(descending=True)
        expected[i] = 0.9 * (g_n[order[0]][i] + g_n[order[1]][i]) / 2 - 0.1 * (g_n[order[2]][i] + g_n[order[3]][i]) / 2
    assert_recomputed(g, expected)


def test_dds(one_thread, sd, inp):
    """One (t, eps) for both branches: g = E_7.5(z_t^tgt; y_tgt) − E_7.5(z_t^src; y_src)."""
    _, g = run(DDS(DDSConfig(), sd), inp, seed=7)
    torch.manual_seed(7)
    t = torch.randint(50, 949, (B,))
    eps = torch.randn(inp.x.shape)
    a, s = a_s(sd, t)
    expected = (cfg(sd, a * inp.x.detach() + s * eps, t, inp.cond, inp.uncond, 7.5)
                - cfg(sd, a * inp.source_x + s * eps, t, inp.source_cond, inp.uncond, 7.5))
    assert_recomputed(g, expected)


def test_gcs(one_thread, sd, inp):
    """The three GCS gradients from the DDIM-inverted path, with the VAE decoding the x̂0s for the pixel term:
    g = λ_g·[2·w_cc·a_e·(…) + 2·w_gc·(x̂0^∅ − x̂0^ω)] on x and g_I = λ_g·2·w_cp·(D(x̂0^∅) − D(x̂0^ω)) on the render."""
    loss = GCS(GCSConfig(), sd)
    out, g = run(loss, inp, seed=8)
    g_rgb = inp.rgb.grad * B
    t, s, e = (full(int(out.logs[k])) for k in ("t", "s", "e"))
    xi = loss.noise_pixels.value + 0.1 * loss.noise_offset.value
    a_e, s_e = a_s(sd, e)
    x_e = a_e * inp.x.detach() + s_e * xi
    e_0_e = unet(sd, x_e, e, inp.uncond)
    x_s = ddim(sd, x_e, e_0_e, e, s)
    x_t = ddim(sd, x_s, unet(sd, x_s, s, inp.uncond), s, t)
    e_t = cfg(sd, x_t, t, inp.cond, inp.uncond, 7.5)
    x_s_t = ddim(sd, x_t, e_t, t, s)
    d_cc = ddim(sd, x_t, unet(sd, x_t, t, inp.uncond), t, e) - ddim(sd, x_s_t, unet(sd, x_s_t, s, inp.uncond), s, e)
    x_e_t = ddim(sd, x_t, e_t, t, e)
    x0_cfg = (x_e_t - s_e * cfg(sd, x_e_t, e, inp.cond, inp.uncond, 7.5)) / a_e
    x0_null = (x_e - s_e * e_0_e) / a_e
    assert_recomputed(g, 0.1 * (2 * 1.0 * a_e * d_cc + 2 * 0.5 * (x0_null - x0_cfg)))
    with torch.no_grad():
        assert_recomputed(g_rgb, 0.1 * 2 * 0.5 * (sd.decode(x0_null) - sd.decode(x0_cfg)))
