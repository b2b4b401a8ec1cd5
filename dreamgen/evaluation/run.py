"""``dreamgen eval RUN_DIR``: score a run whose prompt is a caption of the procedural world against the true object.

The result is rendered by its own renderer (Lambertian, light at the camera, like the world's ground truth) in the
stage its newest checkpoint is in. Its occupancy is, for a density field, ``density > τ`` with τ the export's
iso-level (so the mesh and the metric agree), and for a surface, the inside of its closed mesh. When the run has
exported ``mesh.glb``, the asset is scored too (:mod:`dreamgen.evaluation.mesh`). Metric definitions live in
:mod:`dreamgen.world.metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from dreamgen.evaluation.mesh import evaluate_mesh
from dreamgen.geometry.base import SurfaceField
from dreamgen.geometry.isosurface import auto_threshold, density_grid, field_device, inside_mesh
from dreamgen.runs import atomic_write_text
from dreamgen.session import load_scene
from dreamgen.world.metrics import evaluate


def occupancy_fn(geometry, export_cfg) -> tuple[Callable[[torch.Tensor], torch.Tensor], float | None]:
    """(points [N,3] -> bool [N], the density threshold or None for a surface)."""
    if isinstance(geometry, SurfaceField):
        with torch.no_grad():
            verts, faces = geometry.surface()
        verts, faces = verts.float().cpu().numpy(), faces.cpu().numpy()
        return (lambda p: torch.from_numpy(inside_mesh(verts, faces, p.cpu().numpy()))), None
    grid, _, _ = density_grid(geometry, 64, export_cfg.chunk)
    tau = export_cfg.threshold or auto_threshold(grid, export_cfg.threshold_rule, export_cfg.floor_ratio)
    device = field_device(geometry)
    return (lambda p: geometry.density(p.to(device)) > tau), float(tau)


@contextmanager
def repainted(geometry, paint: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """The field with its albedo replaced by ``paint`` (points [N,3] -> [N,3]) while inside: a surface's renderer
    asks ``albedo(points)``, a density field's renderer calls the field for density and albedo together."""
    field_forward = geometry.forward
    geometry.albedo = paint
    geometry.forward = lambda points, with_normal=False: {**field_forward(points, with_normal), "albedo": paint(points)}
    try:
        yield
    finally:
        del geometry.albedo, geometry.forward  # the class's own methods again


class RunViews:
    """A run's newest checkpoint (on ``device``), rendered as the world's ground truth is: Lambertian, light at the
    camera, in the stage the checkpoint is in."""

    def __init__(self, run_dir: Path, device: torch.device | str = "cpu"):
        self.cfg, scene, self.step = load_scene(Path(run_dir), device)
        self.stage = scene.stage.name
        self.renderer, self.geometry, self.device = scene.renderers[0], scene.particles[0], device
        self.renderer.eval()

    def render(self, cams, shading: str = "lambertian") -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb [B,H,W,3], opacity [B,H,W]) on the run's device."""
        out = self.renderer(cams.to(self.device), shading=shading, train=False)
        return out["rgb"], out["opacity"][..., 0]

    def repaint(self, cams, paint: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`render` with the albedo replaced by ``paint`` (see :func:`repainted`)."""
        with repainted(self.geometry, paint):
            return self.render(cams)


@torch.no_grad()
def evaluate_run(run_dir: Path, n_views: int = 8, resolution: int = 64,
                 device: torch.device | str = "cpu") -> dict:
    """Score the run's last checkpoint (on ``device``; the ground truth and the scores are computed on the CPU) and
    its mesh.glb against the world's exact object; writes ``eval.json``."""
    run_dir = Path(run_dir)
    run = RunViews(run_dir, device)
    cfg = run.cfg
    occ_fn, tau = occupancy_fn(run.geometry, cfg.export)
    metrics = evaluate(run.render, occ_fn, cfg.prompt, n_views=n_views, resolution=resolution,
                       camera_cfg=cfg.camera, occ_bound=float(run.geometry.radius),
                       silhouette_fn=lambda cams: run.render(cams, "albedo"),  # no normals: ~3x faster
                       repaint_fn=run.repaint)
    metrics = {"prompt": cfg.prompt, "step": run.step, "stage": run.stage, "density_threshold": tau, **metrics}
    metrics["offset"] = [float(v) for v in np.asarray(metrics["offset"], dtype=np.float64).flatten()]
    glb = run_dir / "mesh.glb"
    metrics["mesh"] = evaluate_mesh(glb, cfg.prompt) if glb.exists() else None
    atomic_write_text(run_dir / "eval.json", json.dumps(metrics, indent=2))
    return metrics
