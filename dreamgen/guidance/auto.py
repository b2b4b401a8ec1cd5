"""``--guidance auto`` (the default): Stable Diffusion when CUDA is usable and its weights are on this machine, else
the embedded prior. The choice is made when the config is composed (:func:`dreamgen.config.resolve_auto_guidance`),
so a run's ``config.yaml`` and ``dreamgen config show`` name the concrete guidance; this module holds the ``auto``
section's settings and builds whatever concrete guidance a config names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamgen.errors import ConfigError
from dreamgen.registry import lookup, register


@dataclass
class AutoGuidanceConfig:
    name: str = "auto"
    pretrained: str = "stabilityai/stable-diffusion-2-1-base"  # the SD source auto looks for


@register("guidance", "auto", config=AutoGuidanceConfig,
          summary="Stable Diffusion when CUDA is usable and its weights are on this machine, else the embedded prior")
class AutoGuidance:
    def __init__(self, cfg: AutoGuidanceConfig, device: torch.device | str = "cpu"):
        raise ConfigError("guidance 'auto' is resolved when the config is composed; build from a composed config")


def build_guidance(cfg, device: torch.device):
    """The guidance a (composed, so concrete) config names."""
    return lookup("guidance", cfg.name).cls(cfg, device=device)
