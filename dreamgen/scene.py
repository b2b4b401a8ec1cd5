"""What a run optimises, stage by stage: the 3-D particles, their renderers and the shared background.

A run is a list of stages (``cfg.stages``): ``nerf`` (a density field, volume rendered), optionally ``dmtet``
(Magic3D's fine stage: a surface handed off from the coarse field, rasterised at a higher resolution, with a lower
noise range) and after it ``texture`` (DreamGaussian's refinement: the surface frozen, its texture refined by a loss
of its own). One :class:`Stage` object per stage owns everything that changes at the boundary: how its geometry is
made (from scratch, or handed off from the previous stage's), its renderer, which parameter groups it trains and at
which learning rates, its camera sampler, its noise range and, where it has one, its own loss. The run's loss config
is never rewritten: the stage's noise range reaches the loss with each step's input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dreamgen import registry
from dreamgen.cameras import CameraSampler
from dreamgen.errors import ConfigError
from dreamgen.geometry.dmtet import DMTetConfig, DMTetGeometry
from dreamgen.losses.core import LossConfig, check_t_range
from dreamgen.render.background import Background
from dreamgen.render.bake import bake_texture
from dreamgen.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamgen.render.raster import BACKENDS
from dreamgen.render.shading import ShadingConfig
from dreamgen.render.volume import VolumeRenderer
from dreamgen.schema import bounded


@dataclass
class FineStageConfig:
    """The DMTet stage of ``stages: [nerf, dmtet]`` (Magic3D): a surface handed off from the coarse NeRF, rendered
    by the mesh rasteriser at a higher resolution, with a lower noise range."""

    steps: int = bounded(300, ge=1)
    resolution: int = bounded(64, ge=8)
    lr: float = bounded(0.005, gt=0.0)  # SDF, deformation and texture tables
    lr_net: float = bounded(0.001, gt=0.0)  # texture MLP
    t_min: Any = bounded(0.02, gt=0.0, lt=1.0)
    t_max: Any = bounded(0.5, gt=0.0, lt=1.0)
    lambda_normal_consistency: Any = bounded(0.0, ge=0.0)
    lambda_laplacian: Any = bounded(0.0, ge=0.0)
    # False: the texture handed off from the NeRF is kept and only the surface trains; all-round SDS steps at the
    # surface's resolution average out what the prior draws view by view (the house's door; docs/janus.md)
    train_texture: bool = True
    # At the hand-off, fit the surface's texture to the NeRF's albedo renders from bake_views cameras of this
    # stage's sampler (0 steps: off): what the NeRF shows through its volume, not only its albedo field on the
    # surface (dreamgen.render.bake)
    bake_steps: int = bounded(0, ge=0)
    bake_views: int = bounded(32, ge=1)
    backend: str = bounded("auto", choices=BACKENDS)  # rasteriser: auto = nvdiffrast on CUDA when importable
    # The surface's own settings. Its texture field copies the coarse NeRF's albedo network when their hash grid,
    # MLP and radius match (geometry.texture_init=auto), else it is distilled from it.
    geometry: DMTetConfig = field(default_factory=DMTetConfig)

    def check(self, key: str) -> None:
        check_t_range(self.t_min, self.t_max, key)


@dataclass
class TextureStageConfig:
    """The texture stage of ``stages: [nerf, dmtet, texture]`` (DreamGaussian's refinement stage): the DMTet surface
    kept as it is, its texture trained by ``loss`` at a low noise range, where a render's details survive the noise.
    The first ``front_steps`` steps see the object from within ``front_azimuth`` degrees of its front: details the
    prior draws view by view (a door) only line up on a rounded surface when the views agree (docs/janus.md)."""

    steps: int = bounded(100, ge=1)
    resolution: int = bounded(0, ge=0)  # 0: fine.resolution
    lr: float = bounded(0.03, gt=0.0)  # texture tables
    lr_net: float = bounded(0.001, gt=0.0)  # texture MLP
    loss: str = "refine"  # a registered loss, with its own defaults but for guidance_scale and the noise range
    guidance_scale: float = bounded(7.5, ge=0.0)
    t_min: Any = bounded(0.05, gt=0.0, lt=1.0)
    t_max: Any = bounded(0.3, gt=0.0, lt=1.0)
    front_steps: int = bounded(0, ge=0)
    front_azimuth: float = bounded(5.0, gt=0.0, le=180.0)  # ±1–5° paints a door, ±15° smears it (docs/janus.md)
    # The front phase draws new detail, so it noises more: a door is asked for at t >= 0.2 (docs/league.md, probe)
    front_t_min: float = bounded(0.2, gt=0.0, lt=1.0)
    front_t_max: float = bounded(0.5, gt=0.0, lt=1.0)
    # The embedded prior's weights for this stage ("": the run's guidance.weights). A prior can be the better teacher of
    # shape and the worse of paint: v2-pose, taught the layout at high noise, whitens the paint at this stage's low
    # noise, where v2 keeps it (the house, docs/janus.md).
    weights: str = ""

    def check(self, key: str) -> None:
        check_t_range(self.t_min, self.t_max, key)
        if not self.front_t_min < self.front_t_max:
            raise ConfigError(f"{key}.front_t_min={self.front_t_min} and {key}.front_t_max={self.front_t_max}: "
                              "front_t_min must be below front_t_max")
        if self.loss not in registry.entries("loss"):
            raise ConfigError(f"{key}.loss={self.loss!r}: not a registered loss (see `dreamgen losses`)")


class Stage:
    """One stage of a run (see the module docstring)."""

    name: str
    frozen: tuple[str, ...] = ()  # parameter groups (by name) this stage does not train

    def __init__(self, cfg, start: int = 0):
        self.cfg = cfg
        self.start = start  # the run's step at which this stage begins

    @property
    def steps(self) -> int:
        raise NotImplementedError

    def make_geometry(self, device: torch.device, previous: nn.Module | None) -> nn.Module:
        """A fresh geometry, or (``previous`` given) one handed off from the previous stage's."""
        raise NotImplementedError

    def make_renderer(self, geometry: nn.Module, background: Background) -> nn.Module:
        raise NotImplementedError

    def learning_rates(self) -> tuple[float, float]:
        """(grid/SDF tables, small networks)."""
        raise NotImplementedError

    def sampler(self) -> CameraSampler:
        raise NotImplementedError

    def t_bounds(self, step: int) -> tuple[Any, Any] | None:
        """This stage's (t_min, t_max) at ``step``, numbers or schedules; None keeps the loss's own range."""
        return None

    def loss_config(self) -> LossConfig | None:
        """The config of this stage's own loss; None trains with the run's loss."""
        return None

    def guidance_weights(self) -> str:
        """The prior weights this stage's guidance loads; "" keeps the run's guidance."""
        return ""

    def settle(self, previous: nn.Module, renderer: nn.Module) -> None:
        """After a hand-off: fit what this stage's ``renderer`` shows to what the ``previous`` stage's did."""


class NerfStage(Stage):
    name = "nerf"

    @property
    def steps(self) -> int:
        return self.cfg.trainer.steps

    def make_geometry(self, device, previous=None):
        return registry.lookup("geometry", self.cfg.geometry.name).cls(self.cfg.geometry, device=device)

    def make_renderer(self, geometry, background):
        return VolumeRenderer(geometry, background, self.cfg.renderer)

    def learning_rates(self):
        return self.cfg.trainer.lr, self.cfg.trainer.lr_net

    def sampler(self):
        return CameraSampler(self.cfg.camera)


class DMTetStage(Stage):
    name = "dmtet"

    @property
    def steps(self) -> int:
        return self.cfg.fine.steps

    def geometry_config(self) -> DMTetConfig:
        """``fine.geometry`` with its unset texture settings taken from the coarse geometry's (see DMTetConfig)."""
        geo, coarse = self.cfg.fine.geometry, self.cfg.geometry
        return dataclasses.replace(geo, grid=geo.grid or getattr(coarse, "grid", None),
                                   mlp_width=geo.mlp_width or getattr(coarse, "mlp_width", None),
                                   mlp_layers=geo.mlp_layers if geo.mlp_layers is not None
                                   else getattr(coarse, "mlp_layers", None))

    def make_geometry(self, device, previous=None):
        geo_cfg = self.geometry_config()
        if previous is None:  # to be filled from a checkpoint
            return DMTetGeometry(geo_cfg, device=device)
        return DMTetGeometry.from_nerf(previous, geo_cfg)

    def make_renderer(self, geometry, background):
        shading = {f.name: getattr(self.cfg.renderer, f.name) for f in dataclasses.fields(ShadingConfig)}
        return MeshRenderer(geometry, background, MeshRendererConfig(**shading, backend=self.cfg.fine.backend))

    @property
    def frozen(self) -> tuple[str, ...]:
        return () if self.cfg.fine.train_texture else ("geometry.grid", "geometry.net")

    def learning_rates(self):
        return self.cfg.fine.lr, self.cfg.fine.lr_net

    def sampler(self):
        return CameraSampler(self.camera_config(self.cfg.fine.resolution))

    def camera_config(self, resolution: int):
        """The run's camera ranges at one fixed render resolution."""
        return dataclasses.replace(self.cfg.camera, resolution=[resolution], resolution_milestones=[])

    def t_bounds(self, step):
        return self.cfg.fine.t_min, self.cfg.fine.t_max

    def settle(self, previous, renderer):
        fine = self.cfg.fine
        if fine.bake_steps:
            sampler = self.sampler()
            batches = math.ceil(fine.bake_views / self.cfg.camera.batch_size)  # at least bake_views cameras
            views = [sampler.sample(self.start) for _ in range(batches)]
            bake_texture(previous, renderer, views, fine.bake_steps, fine.geometry.distill_lr)


class TextureStage(DMTetStage):
    """The DMTet surface handed on unchanged (SDF and deformation frozen), its texture refined."""

    name = "texture"
    frozen = ("geometry.sdf",)

    @property
    def steps(self) -> int:
        return self.cfg.texture.steps

    def make_geometry(self, device, previous=None):
        return previous if previous is not None else DMTetGeometry(self.geometry_config(), device=device)

    def settle(self, previous, renderer):
        """Nothing to carry over: the surface and its texture are the DMTet stage's own."""

    def learning_rates(self):
        return self.cfg.texture.lr, self.cfg.texture.lr_net

    def sampler(self):
        tex = self.cfg.texture
        return CameraSampler(self.camera_config(tex.resolution or self.cfg.fine.resolution),
                             front_until=self.front_end, front_azimuth=tex.front_azimuth)

    @property
    def front_end(self) -> int:
        """The run's step at which the front phase ends (cameras and noise range both switch there)."""
        return self.start + self.cfg.texture.front_steps

    def t_bounds(self, step):
        tex = self.cfg.texture
        return (tex.front_t_min, tex.front_t_max) if step < self.front_end else (tex.t_min, tex.t_max)

    def loss_config(self):
        tex = self.cfg.texture
        return registry.lookup("loss", tex.loss).config(name=tex.loss, guidance_scale=tex.guidance_scale)

    def guidance_weights(self) -> str:
        return self.cfg.texture.weights


STAGES: dict[str, type[Stage]] = {"nerf": NerfStage, "dmtet": DMTetStage, "texture": TextureStage}


def make_stages(cfg) -> list[Stage]:
    stages, start = [], 0
    for name in cfg.stages:
        stages.append(STAGES[name](cfg, start))
        start += stages[-1].steps
    return stages


def total_steps(stages: list[Stage]) -> int:
    """Optimisation steps of a run through ``stages`` (e.g. ``make_stages(cfg)``), all of them."""
    return sum(stage.steps for stage in stages)


class Scene(nn.Module):
    """P geometry particles sharing one background, each with its renderer, in one stage at a time."""

    def __init__(self, cfg, device: torch.device | str = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.stages = make_stages(cfg)
        self.stage = self.stages[0]
        self.background = Background(cfg.background)
        self.particles = nn.ModuleList([self.stage.make_geometry(device)
                                        for _ in range(max(1, cfg.trainer.particles))])
        self.renderers = self._renderers()
        self.to(device)

    @property
    def stage_index(self) -> int:
        return self.stages.index(self.stage)

    def _renderers(self) -> nn.ModuleList:
        return nn.ModuleList([self.stage.make_renderer(g, self.background) for g in self.particles])

    def enter(self, index: int, device: torch.device | str, handoff: bool = True) -> None:
        """Switch to stage ``index``: each particle's geometry handed off from its current one (``handoff``), or
        made empty, to be filled from a checkpoint."""
        stage, previous = self.stages[index], self.renderers
        self.particles = nn.ModuleList([stage.make_geometry(device, g if handoff else None)
                                        for g in self.particles]).to(device)
        self.stage = stage
        self.renderers = self._renderers()
        if handoff:
            with torch.enable_grad():
                for before, after in zip(previous, self.renderers):
                    stage.settle(before, after)
        for geometry in self.particles:
            for group in geometry.param_groups(0.0):
                for p in group["params"]:
                    p.requires_grad_(group["name"] not in stage.frozen)  # no gradient to compute for what it keeps

    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups of the current stage: each particle's groups at the stage's learning rates, then the
        background's."""
        lr, lr_net = self.stage.learning_rates()
        groups: list[dict[str, Any]] = []
        for g in self.particles:
            groups += [group for group in g.param_groups(lr, lr_net) if group["name"] not in self.stage.frozen]
        groups.append({"params": list(self.background.parameters()), "lr": self.cfg.trainer.lr_background,
                       "name": "background"})
        return [g for g in groups if g["params"]]
