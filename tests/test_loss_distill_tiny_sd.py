"""CDS, DSD, ASyncSD, CFD, RSD, RewardSDS and DDS on a real (tiny, random) Stable Diffusion guidance: 3-D text
embeddings [B, L, D], VAE latents and decoding. Each loss must give ∂loss/∂x = weight·g/B with a finite g ≠ 0."""

from __future__ import annotations

import pytest
import torch

from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from dreamgen.losses.asyncsd import AsyncSD, AsyncSDConfig
from dreamgen.losses.base import LossInput
from dreamgen.losses.cds import CDS, CDSConfig
from dreamgen.losses.cfd import CFD, CFDConfig
from dreamgen.losses.dds import DDS, DDSConfig
from dreamgen.losses.dsd import DSD, DSDConfig
from dreamgen.losses.reward_sds import RewardSDS, RewardSDSConfig
from dreamgen.losses.rsd import RSD, RSDConfig

CASES = {
    "cds": (CDS, CDSConfig()),
    "dsd": (DSD, DSDConfig(n_ddim_steps=3)),
    "asyncsd": (AsyncSD, AsyncSDConfig()),
    "cfd": (CFD, CFDConfig(negative_prompt="blurry")),
    "rsd": (RSD, RSDConfig(gamma=10.0)),
    "reward-sds": (RewardSDS, RewardSDSConfig(n_noises=4, path_steps=2)),
    "dds": (DDS, DDSConfig()),
}


@pytest.fixture(scope="module")
def guidance(tiny_sd_path):
    return StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(tiny_sd_path), local_files_only=True))


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_on_stable_diffusion(guidance, name):
    cls, cfg = CASES[name]
    loss = cls(cfg, guidance)
    torch.manual_seed(0)
    b, size = 3, guidance.image_size
    rgb = torch.rand(b, size, size, 3)
    x = guidance.encode_images(rgb).detach().requires_grad_(True)
    cond, uncond = guidance.encode_text(["a red cube", "a blue ball"]), guidance.encode_text([""])
    inp = LossInput(x=x, cond=cond[[0, 0, 0]], uncond=uncond.expand(b, -1, -1), step=10, total_steps=100,
                    rgb=rgb, opacity=torch.rand(b, size, size, 1), points=torch.randn(b, size, size, 3),
                    n_particles=3, source_x=x.detach().flip(0), source_cond=cond[[1, 1, 1]])
    out = loss(inp)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    assert all(isinstance(v, float) for v in out.logs.values())
