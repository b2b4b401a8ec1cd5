"""Analytic fields for the textured-export tests: a smooth ball whose surface and colours are known in closed form."""

from __future__ import annotations

import torch

PEAK = 50.0


def smooth_colour(p: torch.Tensor) -> torch.Tensor:
    """A smooth colour field that is never black (so background texels, which are black, stand out)."""
    return 0.2 + 0.6 * (p + 1.0) / 2.0


class SmoothBall:
    """Density PEAK * sigmoid((r - |x|) / width): its PEAK/2 level set is the sphere of radius ``r``."""

    radius = 1.0

    def __init__(self, r: float = 0.6, width: float = 0.02, colour=smooth_colour):
        self.r, self.width, self.colour = r, width, colour

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid((self.r - points.norm(dim=-1)) / self.width)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.colour(points)
