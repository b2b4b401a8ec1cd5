"""The particle score ε_ψ shared by VSD, ESD and ASD: a trainable copy of the denoiser, its optimiser, its checkpoint.

This module is a helper of that loss family, not a loss: it registers nothing.

- ``ParticleScoreConfig``: the config fields the three losses share, with ProlificDreamer's defaults
  (threestudio ``configs/prolificdreamer.yaml``): ω = 7.5, t_max 0.98 → 0.5 at step 5000, LoRA rank 4, AdamW at
  lr 1e-4 with betas (0.9, 0.99) and eps 1e-15, camera dropout 0.1, one LoRA step per iteration.
- ``ParticleScore``: ε_ψ(x_t, t, y, c) = ``guidance.trainable_copy(lora_rank, camera_dim)`` and its optimiser. The
  camera-free score e_ψ(∅cam) is the same network fed the null camera (zeros). When the copy has no trainable
  parameters (an exact score in the 2-D lab), there is no optimiser and the losses skip the LoRA step.
- A checkpoint holds only the trainable weights (LoRA and camera MLP, never the frozen base denoiser) and the
  optimiser state, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dreamgen.errors import ConfigError
from dreamgen.losses.core import LossConfig


@dataclass
class ParticleScoreConfig(LossConfig):
    guidance_scale: float = 7.5
    t_max: Any = field(default_factory=lambda: [5000, 0.98, 0.5, 5001])
    lora_rank: int = 4
    camera_dim: int = 16  # flattened 4×4 camera-to-world matrix
    lora_lr: float = 1e-4
    lora_camera_dropout: float = 0.1  # probability, per sample, of training on the null camera
    lora_steps_per_iter: int = 1  # optimiser steps on ε_ψ per loss call (0 keeps ψ frozen)


class ParticleScore(nn.Module):
    def __init__(self, guidance, cfg: ParticleScoreConfig):
        super().__init__()
        if not 0.0 <= cfg.lora_camera_dropout <= 1.0:
            raise ConfigError(f"loss.lora_camera_dropout must lie in [0, 1], got {cfg.lora_camera_dropout}")
        if cfg.lora_steps_per_iter < 0:
            raise ConfigError(f"loss.lora_steps_per_iter must be >= 0, got {cfg.lora_steps_per_iter}")
        self.net = guidance.trainable_copy(cfg.lora_rank, cfg.camera_dim)
        params = self.net.trainable_parameters()
        self.optimizer = (
            torch.optim.AdamW(params, lr=cfg.lora_lr, betas=(0.9, 0.99), eps=1e-15) if params else None
        )

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    def predict_noise(self, x_t: Tensor, t: Tensor, emb: Tensor, camera: Tensor | None) -> Tensor:
        return self.net.predict_noise(x_t, t, emb, camera)

    @torch.no_grad()
    def eps_camera_pair(self, x_t: Tensor, t: Tensor, emb: Tensor, camera: Tensor | None) -> tuple[Tensor, Tensor]:
        """(e_ψ(x_t; y, c), e_ψ(x_t; y, ∅cam)) from one batched forward; with no camera both are e_ψ(∅cam)."""
        if camera is None:
            e = self.net.predict_noise(x_t, t, emb, None)
            return e, e
        cams = torch.cat([camera, torch.zeros_like(camera)])
        e = self.net.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb, emb]), cams)
        e_cam, e_free = e.chunk(2)
        return e_cam, e_free

    def step(self, objective: Tensor) -> None:
        """One optimiser step on ψ that descends ``objective``."""
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()

    def checkpoint_state(self) -> dict[str, Any]:
        weights = {n: p.detach() for n, p in self.net.named_parameters() if p.requires_grad}
        return {"weights": weights, "optimizer": self.optimizer.state_dict() if self.trainable else None}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        own = {n: p for n, p in self.net.named_parameters() if p.requires_grad}
        missing = sorted(set(own) - set(state["weights"]))
        if missing:
            raise ConfigError(f"the checkpoint's particle score lacks {len(missing)} weights, e.g. {missing[0]!r}; "
                              "was it saved with another lora_rank or guidance?")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(state["weights"][n])
        if self.trainable:
            self.optimizer.load_state_dict(state["optimizer"])
