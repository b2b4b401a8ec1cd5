"""``dreamgen probe RUN_DIR``: what the guidance asks of a run's result.

For a few views (azimuths from the object's front) and noise levels t, the result is rendered as in training,
noised to ``x_t = α_t·x + σ_t·ε`` and denoised in one step with the run's own conditioning (view-dependent prompt,
Perp-Neg, camera) and classifier-free guidance: ``x̂₀ = (x_t − σ_t·ε̂_ω)/α_t``. That is the image one SDS step pulls
the render toward, since the SDS gradient ``w(t)·(ε̂_ω − ε)`` equals ``w(t)·α_t/σ_t·(x − x̂₀)``. A feature in x̂₀ that
the render lacks (a door the prior paints on a front wall) is one the distillation is asked for; a render that x̂₀
reproduces at every t is a fixed point of the loss, right or wrong. The sheet has one row per noise level under the
renders, one column per view; ``pull`` is the mean absolute difference of each x̂₀ from its render.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from dreamgen.cameras import make_cameras
from dreamgen.device import resolve_device
from dreamgen.errors import ConfigError
from dreamgen.guidance.auto import build_guidance
from dreamgen.losses.core import ScoreCore
from dreamgen.prompts import PromptSet
from dreamgen.runs import image_grid, save_png
from dreamgen.session import load_scene

LABEL_WIDTH = 56


@dataclass
class Probe:
    azimuths: list[float]  # degrees from the front
    noise_levels: list[float]  # t as a fraction of the guidance's training timesteps
    render: Tensor  # [V,S,S,3] the renders as the guidance sees them, decoded back to RGB
    x0: Tensor  # [T,V,S,S,3] the guided one-step estimates

    @property
    def pull(self) -> Tensor:
        """[T,V] mean |x̂₀ − render| per noise level and view."""
        return (self.x0 - self.render).abs().mean(dim=(-3, -2, -1))

    def sheet(self, scale: int = 3) -> Image.Image:
        """Renders on top, one row of x̂₀ per noise level, views left to right, labelled."""
        grid = image_grid([self.render, *self.x0]).clamp(0, 1)
        img = Image.fromarray((grid.numpy() * 255).round().astype("uint8"))
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        sheet = Image.new("RGB", (LABEL_WIDTH + img.width, 14 + img.height), "white")
        sheet.paste(img, (LABEL_WIDTH, 14))
        draw = ImageDraw.Draw(sheet)
        cell = img.width // len(self.azimuths)
        for j, az in enumerate(self.azimuths):
            draw.text((LABEL_WIDTH + j * cell + 4, 1), f"azimuth {az:g}", fill="black")
        row = img.height // (1 + len(self.noise_levels))
        for i, label in enumerate(["render", *(f"t = {t:g}" for t in self.noise_levels)]):
            draw.text((4, 14 + i * row + row // 2 - 5), label, fill="black")
        return sheet


@torch.no_grad()
def probe_run(run_dir: Path, azimuths: list[float], noise_levels: list[float], guidance_scale: float | None = None,
              elevation: float | None = None, seed: int = 0, device: str = "auto") -> Probe:
    """Probe the newest checkpoint of ``run_dir`` (see the module docstring); ``guidance_scale`` and ``elevation``
    (degrees) None: the run's CFG scale and evaluation elevation."""
    for t in noise_levels:
        if not 0.0 < t < 1.0:
            raise ConfigError(f"noise level {t}: must lie strictly between 0 and 1")
    dev = resolve_device(device)
    cfg, scene, step = load_scene(run_dir, dev)
    guidance = build_guidance(cfg.guidance, dev)
    prompts = PromptSet(guidance, cfg.prompt, cfg.prompts)
    core = ScoreCore(guidance, cfg.loss)
    c, n = cfg.camera, len(azimuths)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    elevation = c.eval_elevation if elevation is None else elevation
    cams = make_cameras(torch.tensor(azimuths, dtype=torch.float32), full(elevation), full(c.eval_distance),
                        full(c.eval_fov), scene.stage.sampler().resolution(step), c)
    rgb = scene.renderers[0](cams, shading="lambertian", train=False)["rgb"].float()
    x = guidance.encode_images(rgb)
    cond, perp_neg = prompts.for_cameras(guidance, cams)
    uncond = guidance.condition(prompts.uncond_batch(n), cams)
    gen = torch.Generator().manual_seed(seed)
    x0 = []
    for level in noise_levels:
        t = torch.full((n,), round(level * (guidance.num_train_timesteps - 1)), dtype=torch.long, device=x.device)
        eps = torch.randn(x.shape, generator=gen).to(x)
        x_t = core.add_noise(x, eps, t)
        e_w, _, _ = core.eps_cfg(x_t, t, cond, uncond, guidance_scale, perp_neg)
        x0.append(guidance.decode(core.x0_from_eps(x_t, e_w, t)).float().cpu())
    return Probe(list(azimuths), list(noise_levels), guidance.decode(x).float().cpu(), torch.stack(x0))


def write_probe(probe: Probe, path: Path) -> Path:
    save_png(path, np.asarray(probe.sheet()))
    return path
