"""``dreamgen eval RUN_DIR``: score a run whose prompt is a caption of the procedural world against the true object.

The result is rendered by its own volume renderer (Lambertian, light at the camera, like the world's ground truth)
and its occupancy is ``density > τ`` with τ the export's automatic iso-level, so the mesh and the metric agree.
Metric definitions live in :mod:`dreamgen.world.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dreamgen.geometry.isosurface import auto_threshold, density_grid
from dreamgen.runs import atomic_write_text
from dreamgen.train import load_scene
from dreamgen.world.metrics import evaluate


@torch.no_grad()
def evaluate_run(run_dir: Path, n_views: int = 8, resolution: int = 64) -> dict:
    cfg, scene, step = load_scene(run_dir)
    renderer, geometry = scene.renderers[0], scene.particles[0]
    renderer.eval()

    def render_fn(cams):
        out = renderer(cams, shading="lambertian", train=False)
        return out["rgb"], out["opacity"][..., 0]

    grid, _, _ = density_grid(geometry, 64, cfg.export.chunk)
    tau = cfg.export.threshold or auto_threshold(grid, cfg.export.threshold_rule, cfg.export.floor_ratio)

    def occ_fn(points):
        return geometry.density(points) > tau

    metrics = evaluate(render_fn, occ_fn, cfg.prompt, n_views=n_views, resolution=resolution,
                       camera_cfg=cfg.camera, occ_bound=float(geometry.radius))
    metrics = {"prompt": cfg.prompt, "step": step, "density_threshold": float(tau), **metrics}
    metrics["offset"] = [float(v) for v in torch.as_tensor(metrics["offset"]).flatten()]
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(metrics, indent=2))
    return metrics
