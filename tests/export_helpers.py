"""Analytic fields for the export tests (a smooth ball, the world's objects) whose surface and colours are known in
closed form, a silhouette measure for rendered views, and fake run folders built from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from dreamgen.export import export_mesh
from dreamgen.world.objects import albedo, sdf

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
    """An object of the procedural world as a density field: PEAK * sigmoid(-sdf / 0.01), so its PEAK/2 level set
    is the exact surface, in dreamgen's world frame (z up, front +x)."""

    radius = 1.0

    def __init__(self, shape: str, colour: str = "orange"):
        self.shape, self.colour = shape, colour

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid(-sdf(self.shape, points) / 0.01)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return albedo(self.shape, self.colour, points)


def taper(mask: np.ndarray) -> tuple[float, float]:
    """Mean silhouette width (pixels) of the top and the bottom third of the rows a mask [H,W] covers."""
    rows = np.flatnonzero(mask.any(axis=1))
    widths = mask[rows[0] : rows[-1] + 1].sum(axis=1)
    third = max(len(widths) // 3, 1)
    return float(widths[:third].mean()), float(widths[-third:].mean())



def fake_run(run_dir, field, prompt: str, cfg) -> dict:
    """A run folder as ``dreamgen run`` leaves it (config.yaml, metrics.jsonl, the exported mesh and turntable)
    without optimising anything: the mesh is ``field``'s. Returns the export's paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"prompt": prompt, "seed": 0, "loss": {"name": "sds"}}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 12.5, "time_render": 0.5}) + "\n")
    return export_mesh(field, cfg, run_dir, metadata={"prompt": prompt, "loss": "sds", "seed": 0})
