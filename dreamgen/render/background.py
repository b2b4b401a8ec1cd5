"""What a ray that leaves the scene sees: a solid colour or a small MLP of the view direction.

``random_color_prob`` swaps, per image and in training only, the background for a random solid colour, which keeps
the geometry from baking the background into its albedo (threestudio's ``random_aug``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamgen.errors import ConfigError
from dreamgen.schema import bounded

BACKGROUND_KINDS = ("solid", "mlp")


@dataclass
class BackgroundConfig:
    kind: str = bounded("solid", choices=BACKGROUND_KINDS)
    color: list[float] = bounded(factory=lambda: [1.0, 1.0, 1.0], ge=0.0, le=1.0)
    random_color_prob: float = bounded(0.0, ge=0.0, le=1.0)
    mlp_width: int = bounded(32, ge=1)
    mlp_frequencies: int = bounded(2, ge=0)  # sin/cos octaves of the direction fed to the MLP

    def check(self, key: str) -> None:
        if len(self.color) != 3:
            raise ConfigError(f"{key}.color={list(self.color)}: needs 3 values (RGB in [0, 1])")


class Background(nn.Module):
    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        if cfg.kind not in BACKGROUND_KINDS:
            raise ValueError(f"background kind must be one of {BACKGROUND_KINDS}, got {cfg.kind!r}")
        if len(cfg.color) != 3:
            raise ValueError(f"background color needs 3 values, got {cfg.color!r}")
        self.cfg = cfg
        self.register_buffer("color", torch.tensor(cfg.color, dtype=torch.float32))
        self.mlp: nn.Module | None = None
        if cfg.kind == "mlp":
            n_in = 3 + 6 * cfg.mlp_frequencies
            self.mlp = nn.Sequential(nn.Linear(n_in, cfg.mlp_width), nn.ReLU(inplace=True),
                                     nn.Linear(cfg.mlp_width, 3))

    def encode(self, dirs: Tensor) -> Tensor:
        """dirs [...,3] -> [..., 3 + 6·mlp_frequencies]: the direction plus sin/cos octaves."""
        freqs = 2.0 ** torch.arange(self.cfg.mlp_frequencies, dtype=dirs.dtype, device=dirs.device)  # [K]
        angles = (dirs[..., None, :] * freqs[:, None] * torch.pi).flatten(-2)  # [...,3K]
        return torch.cat([dirs, angles.sin(), angles.cos()], dim=-1)

    def forward(self, dirs: Tensor, train: bool = False) -> Tensor:
        """dirs [B,H,W,3] unit view directions -> rgb [B,H,W,3] in [0,1]."""
        if self.mlp is None:
            rgb = self.color.to(dirs.dtype).expand(dirs.shape)
        else:
            rgb = torch.sigmoid(self.mlp(self.encode(dirs)))
        if train and self.cfg.random_color_prob > 0:
            B = dirs.shape[0]
            swap = torch.rand(B, device=dirs.device) < self.cfg.random_color_prob  # [B]
            random_rgb = torch.rand(B, 1, 1, 3, device=dirs.device, dtype=dirs.dtype).expand(dirs.shape)
            rgb = torch.where(swap[:, None, None, None], random_rgb, rgb)
        return rgb
