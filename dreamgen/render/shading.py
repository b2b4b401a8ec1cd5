"""DreamFusion shading: colour = albedo · (ambient + diffuse · max(0, n·l)), with a point light near the camera.

Modes (one per rendered batch):
- ``albedo``: the albedo alone (no normals needed);
- ``lambertian``: the formula above;
- ``textureless``: the same with one albedo for the whole object, so the prior judges the shape alone: white, or
  (``textureless_albedo: mean``) the object's own mean albedo in that image, held fixed (no gradient) — for a prior
  that has never seen white objects, and for shapes like the torus's hole that paint could otherwise fake;
- ``normal``: (n + 1)/2, for previews.
In training the mode is drawn with ``albedo_only_prob`` / ``textureless_prob`` (rest lambertian; either may be a
schedule over the run's steps, e.g. a first phase of mostly shape-only renders), and the light is
placed along the camera direction (jittered) at a random distance, as in DreamFusion/threestudio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.schema import bounded, change_points, scheduled

SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")
MODES_NEEDING_NORMALS = ("lambertian", "textureless", "normal")


def sample_shading_mode(albedo_only_prob: float, textureless_prob: float,
                        generator: torch.Generator | None = None) -> str:
    u = float(torch.rand((), generator=generator))
    if u < albedo_only_prob:
        return "albedo"
    if u < albedo_only_prob + textureless_prob:
        return "textureless"
    return "lambertian"


def sample_light_positions(cam_positions: Tensor, distance_range: tuple[float, float] | list[float],
                           perturb_std: float, generator: torch.Generator | None = None) -> Tensor:
    """cam_positions [B,3] -> light positions [B,3]: the camera direction jittered by N(0, perturb_std²) per axis,
    normalised, at a distance drawn uniformly from ``distance_range``."""
    B = cam_positions.shape[0]
    noise = torch.randn(B, 3, generator=generator).to(cam_positions)
    direction = F.normalize(cam_positions + perturb_std * noise, dim=-1)
    lo, hi = float(distance_range[0]), float(distance_range[1])
    dist = (lo + (hi - lo) * torch.rand(B, generator=generator)).to(cam_positions)
    return direction * dist[:, None]


def shade(albedo: Tensor, normal: Tensor | None, light_dir: Tensor | None, mode: str,
          ambient: float = 0.1, diffuse: float = 0.9) -> Tensor:
    """Per-sample colour [...,3] from albedo [...,3], unit normal [...,3] and unit direction to the light [...,3].

    ``normal`` and ``light_dir`` may be None in ``albedo`` mode.
    """
    if mode == "albedo":
        return albedo
    if normal is None:
        raise ValueError(f"shading mode {mode!r} needs normals")
    if mode == "normal":
        return (normal + 1.0) * 0.5
    if light_dir is None:
        raise ValueError(f"shading mode {mode!r} needs a light direction")
    light = ambient + diffuse * (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)  # [...,1]
    if mode == "textureless":
        return light.expand_as(albedo)
    if mode == "lambertian":
        return albedo * light
    raise ValueError(f"unknown shading mode {mode!r}; valid: {SHADING_MODES}")


def surface_points(origins: Tensor, dirs: Tensor, depth: Tensor, opacity: Tensor) -> Tensor:
    """[B,H,W,3] expected surface point per pixel from rays [B,H,W,3] and the renderers' depth Σ w·t and opacity
    [B,H,W,1] (depth/opacity is the opacity-normalised distance; background pixels land at the ray origin)."""
    return origins + dirs * (depth / opacity.clamp_min(1e-6))


@dataclass
class ShadingConfig:
    """Shading fields shared by the volume and the mesh renderer (DreamFusion):
    colour = albedo · (ambient + diffuse · max(0, n·l)), with a point light near the camera direction."""

    ambient: float = bounded(0.1, ge=0.0)
    diffuse: float = bounded(0.9, ge=0.0)
    # "random" shading: P(albedo), P(textureless), else lambertian; each a number or a schedule [s0, p0, p1, s1]
    albedo_only_prob: Any = bounded(0.1, ge=0.0, le=1.0)
    textureless_prob: Any = bounded(0.5, ge=0.0, le=1.0)
    light_distance: list[float] = bounded(factory=lambda: [0.8, 1.5], gt=0.0)  # world units, from the origin
    light_perturb: float = bounded(1.0, ge=0.0)  # std of the jitter added to the camera direction before normalising
    light_tilt: float = bounded(0.0, ge=-100.0, le=100.0)  # the light's base direction: the camera's tilted up by
    # atan(light_tilt)
    # textureless in white, or in each image's mean albedo (detached: the paint gets no gradient from those renders)
    textureless_albedo: str = bounded("white", choices=("white", "mean"))

    def check(self, key: str) -> None:
        for step in change_points(self.albedo_only_prob, self.textureless_prob):
            total = scheduled(self.albedo_only_prob, step) + scheduled(self.textureless_prob, step)
            if total > 1.0:
                constant = all(isinstance(v, (int, float)) for v in (self.albedo_only_prob, self.textureless_prob))
                at = "" if constant else f" at step {step}"
                raise ConfigError(f"{key}.albedo_only_prob + {key}.textureless_prob = {total:g}{at}: must be ≤ 1 "
                                  "(they are probabilities of one draw)")
        if len(self.light_distance) != 2 or self.light_distance[0] > self.light_distance[1]:
            raise ConfigError(f"{key}.light_distance={list(self.light_distance)}: must be a range [low, high]")


def resolve_shading(shading: str, train: bool, cfg: ShadingConfig, step: int = 0) -> str:
    """``random`` draws a mode for training (``lambertian`` when not training) with the probabilities of the run's
    ``step``; else a mode name is checked."""
    if shading == "random":
        if not train:
            return "lambertian"
        return sample_shading_mode(scheduled(cfg.albedo_only_prob, step), scheduled(cfg.textureless_prob, step))
    if shading in SHADING_MODES:
        return shading
    raise ValueError(f"unknown shading {shading!r}; valid: random, {', '.join(SHADING_MODES)}")


def mean_albedo(albedo_sum: Tensor, weight_sum: Tensor) -> Tensor:
    """Per-image sums of weighted albedo [B,3] and of the weights [B,1] -> the detached mean albedo [B,3] (white
    where an image holds nothing), the tint of ``textureless_albedo: mean``."""
    mean = albedo_sum / weight_sum.clamp_min(1e-6)
    return torch.where(weight_sum > 1e-6, mean, torch.ones_like(mean)).detach()


def light_positions(cam_pos: Tensor, cfg: ShadingConfig, train: bool) -> Tensor:
    """cam_pos [B,3] -> light positions [B,3]: the camera direction tilted up by atan(light_tilt); in training
    jittered and at a random distance, otherwise at the camera's distance."""
    dist = cam_pos.norm(dim=-1, keepdim=True)
    base = cam_pos + cfg.light_tilt * dist * torch.tensor([0.0, 0.0, 1.0], dtype=cam_pos.dtype, device=cam_pos.device)
    if train:
        return sample_light_positions(base, cfg.light_distance, cfg.light_perturb)
    return F.normalize(base, dim=-1) * dist
