"""``--guidance auto`` (the default): Stable Diffusion when CUDA is available and its weights load, else the
embedded prior. Says which one it picked in one line."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from dreamgen.errors import GuidanceLoadError
from dreamgen.registry import lookup, register

log = logging.getLogger("dreamgen")


@dataclass
class AutoGuidanceConfig:
    name: str = "auto"
    pretrained: str = "stabilityai/stable-diffusion-2-1-base"


def resolve_auto(cfg: AutoGuidanceConfig, device: torch.device):
    """Returns (guidance, concrete config) so the run folder records what was actually used."""
    if device.type == "cuda":
        sd = lookup("guidance", "stable-diffusion")
        sd_cfg = sd.config(pretrained=cfg.pretrained)
        try:
            guidance = sd.cls(sd_cfg, device=device)
            log.info("guidance: auto picked stable-diffusion (%s) on %s", cfg.pretrained, device)
            return guidance, sd_cfg
        except GuidanceLoadError as e:
            log.info("guidance: stable-diffusion unavailable (%s); auto picked the embedded prior 'shapes'", e)
    else:
        log.info("guidance: no CUDA device, auto picked the embedded prior 'shapes' "
                 "(use --guidance stable-diffusion on a GPU for open-vocabulary prompts)")
    shapes = lookup("guidance", "shapes")
    shapes_cfg = shapes.config()
    return shapes.cls(shapes_cfg, device=device), shapes_cfg


register("guidance", "auto", config=AutoGuidanceConfig,
         summary="Stable Diffusion when CUDA is available and its weights load, else the embedded prior")(resolve_auto)


def build_guidance(cfg, device: torch.device):
    """Build the guidance a config names; returns (guidance, concrete config)."""
    if cfg.name == "auto":
        return resolve_auto(cfg, device)
    entry = lookup("guidance", cfg.name)
    return entry.cls(cfg, device=device), cfg
