"""The optimisation loop: render random cameras, score them with a distillation loss, step Adam.

One step (the hot path): cameras → volume render → guidance encode → loss (guidance forward inside) → backward →
optimiser. Each phase is timed; ``scripts/bench.py`` reports the breakdown. Checkpoints hold everything needed to
continue bit-for-bit on CPU: parameters, optimiser, the loss's own state (LoRA, fixed noise...), and RNG states.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dreamgen import registry
from dreamgen.cameras import CameraSampler, Cameras, rays
from dreamgen.config import RunConfig, to_yaml
from dreamgen.errors import DreamgenError, NonFiniteError
from dreamgen.guidance.auto import build_guidance
from dreamgen.losses.base import LossInput
from dreamgen.losses.core import scheduled
from dreamgen.prompts import PromptSet
from dreamgen.geometry.dmtet import DMTetConfig, DMTetGeometry
from dreamgen.render.background import Background
from dreamgen.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamgen.render.shading import ShadingConfig
from dreamgen.render.volume import VolumeRenderer
from dreamgen.runs import MetricsLog, atomic_torch_save, atomic_write_text, image_grid, save_png, timed

log = logging.getLogger("dreamgen")

PHASES = ("render", "encode", "loss", "backward", "optimizer")


@dataclass
class TrainerConfig:
    steps: int = 1000
    lr: float = 0.01  # hash-grid tables
    lr_net: float = 0.001  # density/albedo MLPs
    lr_background: float = 0.001
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    adam_eps: float = 1e-15
    checkpoint_every: int = 100
    preview_every: int = 100  # 0 disables intermediate previews (the final strip is always written)
    preview_views: int = 8
    preview_resolution: int = 64
    log_every: int = 1
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # Regulariser weights; each may be a schedule [start_step, v0, v1, end_step].
    lambda_orient: Any = 0.0
    lambda_sparsity: Any = 0.0
    lambda_opacity: Any = 0.0
    particles: int = 1  # independent 3-D particles sharing one loss (VSD particles, RSD)
    progress: bool = True


@dataclass
class FineStageConfig:
    """The DMTet stage of ``stages: [nerf, dmtet]`` (Magic3D): a surface handed off from the coarse NeRF, rendered
    by the mesh rasteriser at a higher resolution, with a lower noise range."""

    steps: int = 300
    resolution: int = 64
    lr: float = 0.005  # SDF, deformation and texture tables
    lr_net: float = 0.001  # texture MLP
    t_min: Any = 0.02
    t_max: Any = 0.5
    lambda_normal_consistency: Any = 0.0
    lambda_laplacian: Any = 0.0
    backend: str = "auto"  # rasteriser: auto (nvdiffrast on CUDA when importable) | torch | nvdiffrast
    geometry: DMTetConfig = field(default_factory=DMTetConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DreamgenError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Scene(nn.Module):
    """The optimised 3-D content: P geometry particles sharing one background, each with its renderer.

    ``stage`` is ``nerf`` (volume rendering of the configured geometry) or ``dmtet`` (surfaces, rasterised).
    """

    def __init__(self, cfg: RunConfig, device: torch.device | str = "cpu"):
        super().__init__()
        geo_entry = registry.lookup("geometry", cfg.geometry.name)
        self.stage = "nerf"
        self.particles = nn.ModuleList([geo_entry.cls(cfg.geometry, device=device)
                                        for _ in range(max(1, cfg.trainer.particles))])
        self.background = Background(cfg.background)
        self.renderers = nn.ModuleList([VolumeRenderer(g, self.background, cfg.renderer) for g in self.particles])

    def to_fine(self, cfg: RunConfig, device: torch.device | str, handoff: bool = True) -> None:
        """Replace every NeRF particle by a DMTet surface, initialised from it when ``handoff`` (else empty, to be
        filled from a checkpoint)."""
        fine = cfg.fine
        # The texture field inherits the coarse albedo network, so the hand-off copies it instead of distilling.
        geo_cfg = dataclasses.replace(fine.geometry, grid=copy.deepcopy(cfg.geometry.grid),
                                      mlp_width=cfg.geometry.mlp_width, mlp_layers=cfg.geometry.mlp_layers,
                                      radius=cfg.geometry.radius)
        geos = [DMTetGeometry.from_nerf(g, geo_cfg) if handoff else DMTetGeometry(geo_cfg, device=device)
                for g in self.particles]
        shading = {f.name: getattr(cfg.renderer, f.name) for f in dataclasses.fields(ShadingConfig)}
        mesh_cfg = MeshRendererConfig(**shading, backend=fine.backend)
        self.particles = nn.ModuleList(geos).to(device)
        self.renderers = nn.ModuleList([MeshRenderer(g, self.background, mesh_cfg) for g in self.particles])
        self.stage = "dmtet"


def load_scene(run_dir: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Scene, int]:
    """Rebuild a run's scene from its ``config.yaml`` and last checkpoint (no guidance needed): export, eval."""
    from dreamgen.config import from_yaml_file

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise DreamgenError(f"{run_dir} is not a run folder (no config.yaml)")
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.exists():
        raise DreamgenError(f"{run_dir} has no checkpoint yet ({ckpt} is missing)")
    cfg = from_yaml_file(run_dir / "config.yaml")
    scene = Scene(cfg, device).to(device)
    state = torch.load(ckpt, map_location=device, weights_only=False)
    if state.get("stage", "nerf") == "dmtet":
        scene.to_fine(cfg, device, handoff=False)
    scene.load_state_dict(state["scene"])
    return cfg, scene, int(state["step"])


class Trainer:
    """Owns the components of one run and writes its folder (``run_dir`` may be attached after construction, so
    a failure while building components leaves no empty folder behind)."""

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None, guidance=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        tc: TrainerConfig = cfg.trainer

        if guidance is None:
            guidance, cfg.guidance = build_guidance(cfg.guidance, self.device)
        self.guidance = guidance
        # Seeded after the guidance: building one draws random initial weights, a cached one (batch) does not.
        seed_everything(cfg.seed)
        self.prompts = PromptSet(guidance, cfg.prompt, cfg.prompts, view_prompts=self._debiased_prompts())

        self.scene = Scene(cfg, self.device).to(self.device)
        self.particles, self.background, self.renderers = (self.scene.particles, self.scene.background,
                                                           self.scene.renderers)
        self.sampler = CameraSampler(cfg.camera)
        self.camera_gen = torch.Generator().manual_seed(cfg.seed)

        # The loss gets its own copy of its config: the fine stage changes its noise range.
        self.loss = registry.lookup("loss", cfg.loss.name).cls(copy.deepcopy(cfg.loss), guidance).to(self.device)
        self.optimizer = self._optimizer(tc.lr, tc.lr_net)

        self.source: tuple[Scene, PromptSet] | None = None
        if cfg.source_run:
            src_cfg, src_scene, _ = load_scene(Path(cfg.source_run), self.device)
            self.set_source(src_scene, src_cfg.prompt)
        self.step = 0
        if run_dir is not None:
            self.attach(run_dir)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" and tc.mixed_precision else nullcontext())

    def _debiased_prompts(self) -> dict[str, str] | None:
        """D-SDS prompt debiasing, when the loss config names a masked language model."""
        model = getattr(self.cfg.loss, "prompt_debias_model", "")
        if not model:
            return None
        from dreamgen.cameras import VIEWS
        from dreamgen.prompt_debias import debias_view_prompts

        per_view = debias_view_prompts(self.cfg.prompt, VIEWS, model, self.cfg.loss.prompt_debias_threshold)
        log.info("debiased view prompts: %s", per_view)
        return per_view

    @property
    def total_steps(self) -> int:
        return self.cfg.trainer.steps + (self.cfg.fine.steps if "dmtet" in self.cfg.stages else 0)

    def _optimizer(self, lr: float, lr_net: float) -> torch.optim.Adam:
        tc = self.cfg.trainer
        groups: list[dict[str, Any]] = []
        for g in self.particles:
            groups += g.param_groups(lr, lr_net)
        groups.append({"params": list(self.background.parameters()), "lr": tc.lr_background, "name": "background"})
        groups = [g for g in groups if g["params"]]
        return torch.optim.Adam(groups, betas=tuple(tc.adam_betas), eps=tc.adam_eps)

    def enter_fine_stage(self, handoff: bool = True) -> None:
        """Switch to the DMTet stage: surfaces from the NeRFs, a fresh optimiser, the fine render resolution and
        noise range (Magic3D)."""
        fine = self.cfg.fine
        t0 = time.perf_counter()
        self.scene.to_fine(self.cfg, self.device, handoff)
        self.particles, self.renderers = self.scene.particles, self.scene.renderers
        self.optimizer = self._optimizer(fine.lr, fine.lr_net)
        self.sampler = CameraSampler(dataclasses.replace(self.cfg.camera, resolution=[fine.resolution],
                                                         resolution_milestones=[]))
        self.loss.cfg.t_min, self.loss.cfg.t_max = fine.t_min, fine.t_max
        if handoff:
            log.info("fine stage: DMTet hand-off in %.1f s, %d more steps at %d px",
                     time.perf_counter() - t0, fine.steps, fine.resolution)

    def set_source(self, scene: Scene, prompt: str) -> None:
        """Editing: start from ``scene`` and keep a frozen copy of it, rendered at every step's cameras, as the
        source of the loss (``LossInput.source_x``/``source_cond``, e.g. DDS)."""
        self.scene.load_state_dict(scene.state_dict())
        scene = scene.to(self.device).eval().requires_grad_(False)
        self.source = (scene, PromptSet(self.guidance, prompt, self.cfg.prompts))

    def attach(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    @property
    def geometry(self):
        return self.particles[0]

    # ---- one optimisation step ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        step = self.step
        sync = self.device.type == "cuda"
        times: dict[str, float] = {}
        cams = self.sampler.sample(step, generator=self.camera_gen).to(self.device)
        for r in self.renderers:
            r.update_occupancy(step)

        with self.autocast:
            rng = torch.get_rng_state()
            outs, times["render"] = timed(lambda: [r(cams, shading="random", train=True) for r in self.renderers],
                                          sync)
            rgb = torch.cat([o["rgb"] for o in outs])  # [P*B,H,W,3], particle-major
            x, times["encode"] = timed(lambda: self.guidance.encode_images(rgb), sync)
            inp = self._loss_input(x, rgb, outs, cams)
            if self.source is not None:
                inp.source_x, inp.source_cond = self._source_input(cams, rng)
            loss_out, times["loss"] = timed(lambda: self.loss(inp), sync)
            reg = self._regularisers(outs, step)
            total = loss_out.loss + sum(reg.values())

        if not torch.isfinite(total):
            raise NonFiniteError(
                f"loss became {total.item()} at step {step}; lower trainer.lr or the guidance scale "
                f"(the last checkpoint in {self.run_dir / 'checkpoints'} is intact and can be resumed)")
        self.optimizer.zero_grad(set_to_none=True)
        _, times["backward"] = timed(total.backward, sync)
        _, times["optimizer"] = timed(self.optimizer.step, sync)
        self.step = step + 1

        record = {"step": self.step, "stage": self.scene.stage, "loss": float(total.detach()), "distill": float(loss_out.loss.detach()),
                  **{k: float(v.detach()) for k, v in reg.items()}, **loss_out.logs,
                  **{f"time_{k}": v for k, v in times.items()}}
        return record

    def _loss_input(self, x, rgb, outs, cams: Cameras) -> LossInput:
        P, B = len(self.particles), len(cams)
        view_idx = cams.view_idx.repeat(P)
        opacity = torch.cat([o["opacity"] for o in outs])
        depth = torch.cat([o["depth"] for o in outs])
        origins, dirs = rays(cams)  # [B,H,W,3]
        t_surface = depth / opacity.clamp_min(1e-6)  # the renderer's depth is Σ w·t, not normalised
        points = (origins.repeat(P, 1, 1, 1) + dirs.repeat(P, 1, 1, 1) * t_surface).detach()  # [P*B,H,W,3]
        return LossInput(
            x=x, cond=self.prompts.cond(view_idx), uncond=self.prompts.uncond_batch(P * B), step=self.step,
            total_steps=self.total_steps, camera=cams.flat().repeat(P, 1), prompts=self.prompts, rgb=rgb,
            opacity=opacity, points=points, n_particles=P)

    @torch.no_grad()
    def _source_input(self, cams: Cameras, rng: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen source rendered with the same random draws (shading mode, light, jitter) as this step."""
        scene, prompts = self.source
        after = torch.get_rng_state()
        torch.set_rng_state(rng)
        rgb = scene.renderers[0](cams, shading="random", train=True)["rgb"]
        torch.set_rng_state(after)
        P = len(self.particles)
        return self.guidance.encode_images(rgb).repeat(P, 1, 1, 1), prompts.cond(cams.view_idx.repeat(P))

    def _regularisers(self, outs: list[dict], step: int) -> dict[str, torch.Tensor]:
        tc, fine = self.cfg.trainer, self.cfg.fine
        reg = {}
        for key, lam in (("orient_loss", tc.lambda_orient), ("sparsity_loss", tc.lambda_sparsity),
                         ("opacity_loss", tc.lambda_opacity),
                         ("normal_consistency_loss", fine.lambda_normal_consistency),
                         ("laplacian_loss", fine.lambda_laplacian)):
            w = scheduled(lam, step)
            if w > 0 and key in outs[0]:
                reg[key] = w * sum(o[key] for o in outs) / len(outs)
        return reg

    # ---- loop ---------------------------------------------------------------------------------------------------
    def fit(self) -> None:
        tc, end = self.cfg.trainer, self.total_steps
        atomic_write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))  # with any overrides of a resume
        bar = _progress(end, self.step, enabled=tc.progress)
        try:
            while self.step < end:
                if self.step >= tc.steps and self.scene.stage == "nerf":
                    self.save_preview(self.run_dir / "previews" / "coarse.png")
                    self.enter_fine_stage()
                record = self.train_step()
                if self.step % max(tc.log_every, 1) == 0 or self.step == end:
                    self.metrics.write(record)
                if tc.preview_every and self.step % tc.preview_every == 0:
                    self.save_preview(self.run_dir / "previews" / f"step_{self.step:06d}.png")
                if self.step % tc.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        finally:
            bar.close()
        self.save_preview(self.run_dir / "previews" / "final.png")

    # ---- previews -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, n_views: int, resolution: int, shading: str = "lambertian", particle: int = 0):
        cams = self.sampler.orbit(n_views, resolution).to(self.device)
        return self.renderers[particle](cams, shading=shading, train=False)

    @torch.no_grad()
    def save_preview(self, path: Path) -> None:
        tc = self.cfg.trainer
        rows = []
        for p in range(len(self.particles)):
            shaded = self.render_views(tc.preview_views, tc.preview_resolution, "lambertian", p)
            albedo = self.render_views(tc.preview_views, tc.preview_resolution, "albedo", p)
            normal = shaded.get("normal")
            rows += [shaded["rgb"], albedo["rgb"]]
            if normal is not None:
                rows.append(normal * 0.5 + 0.5)
        save_png(path, image_grid([r.float().cpu() for r in rows]))

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "stage": self.scene.stage,
            "scene": self.scene.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.checkpoint_state(),
            "rng": {"torch": torch.get_rng_state(), "camera": self.camera_gen.get_state(),
                    "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        atomic_torch_save(state, self.checkpoint_path())

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = Path(path or self.checkpoint_path())
        if not path.exists():
            raise DreamgenError(f"no checkpoint to resume from: {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("stage", "nerf") == "dmtet" and self.scene.stage == "nerf":
            self.enter_fine_stage(handoff=False)
        self.scene.load_state_dict(state["scene"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_checkpoint_state(state["loss"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.camera_gen.set_state(rng["camera"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(state["step"])
        self.metrics.truncate_after(self.step)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="optimising", unit="step",
                dynamic_ncols=True, leave=True, smoothing=0.1)


def phase_summary(records: list[dict[str, Any]], skip: int = 1) -> dict[str, float]:
    """Mean seconds per phase over the records (skipping warm-up ones) and steps/s."""
    recs = records[skip:] if len(records) > skip else records
    out = {p: float(np.mean([r[f"time_{p}"] for r in recs])) for p in PHASES if f"time_{p}" in recs[0]}
    total = sum(out.values())
    out["total"] = total
    out["steps_per_s"] = 1.0 / total if total > 0 else math.inf
    return out
