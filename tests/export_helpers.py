"""Analytic fields for the export tests (a smooth ball, the world's objects) whose surface and colours are known in
closed form, and a silhouette measure for rendered views."""

from __future__ import annotations

import numpy as np
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


class WorldObject:
    """An object of the procedural world as a density field: PEAK * sigmoid(-sdf / width), so its PEAK/2 level set
    is the exact surface, in dreamgen's world frame (z up, front +x)."""

    radius = 1.0

    def __init__(self, shape: str, colour: str = "orange", width: float = 0.01):
        self.shape, self.colour, self.width = shape, colour, width

    def density(self, points: torch.Tensor) -> torch.Tensor:
        from dreamgen.world.objects import sdf

        return PEAK * torch.sigmoid(-sdf(self.shape, points) / self.width)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        from dreamgen.world.objects import albedo

        return albedo(self.shape, self.colour, points)


def taper(mask: np.ndarray) -> tuple[float, float]:
    """Mean silhouette width (pixels) of the top and the bottom third of the rows a mask [H,W] covers."""
    rows = np.flatnonzero(mask.any(axis=1))
    widths = mask[rows[0] : rows[-1] + 1].sum(axis=1)
    third = max(len(widths) // 3, 1)
    return float(widths[:third].mean()), float(widths[-third:].mean())

