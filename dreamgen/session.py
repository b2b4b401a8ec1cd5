"""The one owner of a job: a new run, a resumed one, the fine stage from a finished coarse run, or an edit of a
run — then fit and export. ``dreamgen run``/``edit``, the batch runner and the benchmarks all go through here.

A session builds its components first and only then creates its run folder, so a bad prompt or a missing model
leaves nothing behind. It writes the resolved ``config.yaml`` (with any override a resume applied) before training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dreamgen.config import (Layer, RunConfig, compose_layers, flag_layer, load_run_config, load_yaml, parse_dotlist,
                             to_yaml)
from dreamgen.device import resolve_device
from dreamgen.errors import DreamgenError, Interrupted
from dreamgen.interrupts import InterruptPolicy, signal_name
from dreamgen.runs import atomic_write_text, make_run_folders, new_run_dir
from dreamgen.scene import Scene
from dreamgen.train import Trainer

log = logging.getLogger("dreamgen")

# What a resume cannot change: the checkpoint's parameters, loss state and random streams belong to these.
RESUME_FIXED = ("prompt", "seed", "out_dir", "source_run", "guidance", "loss.name", "geometry",
                "trainer.particles", "fine.geometry")


def check_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DreamgenError(f"{run_dir} is not a run folder (no config.yaml)")
    return run_dir


def load_scene(run_dir: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, Scene, int]:
    """A run's config, its scene as of its newest checkpoint (in that checkpoint's stage) and that step; no guidance
    is loaded (export, eval, the source of an edit)."""
    from dreamgen.checkpoint import load_checkpoint

    run_dir = check_run_dir(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    state, path = load_checkpoint(run_dir / "checkpoints", device)
    scene = Scene(cfg, device)
    names = [s.name for s in scene.stages]
    stage = state.get("stage", "nerf")
    if stage not in names:
        raise DreamgenError(f"{path} is in stage {stage!r}, which the run's stages {names} lack")
    if names.index(stage):
        scene.enter(names.index(stage), device, handoff=False)
    try:
        scene.load_state_dict(state["scene"])
    except (RuntimeError, KeyError) as e:
        raise DreamgenError(f"{path} does not fit {run_dir / 'config.yaml'}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
    return cfg, scene, int(state["step"])


def _touched(layer: Any, prefix: str = "") -> list[str]:
    """Dotted keys an override layer sets."""
    keys = []
    for k, v in layer.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        keys += _touched(v, key) if hasattr(v, "items") else [key]
    return keys


@dataclass
class Session:
    trainer: Trainer
    run_dir: Path
    resume_command: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def cfg(self) -> RunConfig:
        return self.trainer.cfg

    # ---- the four ways a job starts -----------------------------------------------------------------------------
    @classmethod
    def new(cls, cfg: RunConfig, guidance=None, run_dir: Path | None = None) -> Session:
        """A new run of ``cfg`` in ``run_dir`` (default: a fresh folder under ``cfg.out_dir``). ``guidance``: an
        already built guidance for ``cfg.guidance`` (a batch worker's cache)."""
        t0 = time.perf_counter()
        if not cfg.prompt.strip():
            raise DreamgenError("the prompt is empty; give a text such as \"a red cube\"")
        trainer = _trainer(cfg, guidance)
        if run_dir is None:
            run_dir = new_run_dir(cfg.out_dir, cfg.prompt)
        else:
            make_run_folders(Path(run_dir))
        return cls._start(trainer, Path(run_dir), t0)

    @classmethod
    def resume(cls, run_dir: Path, overrides: list[str] | None = None, steps: int | None = None,
               guidance=None) -> Session:
        """Continue ``run_dir`` from its newest checkpoint. ``overrides`` (and ``steps``, i.e. trainer.steps) apply
        from the checkpoint on; keys the checkpoint depends on (:data:`RESUME_FIXED`) are refused; ``stages`` may
        only grow at the end (a finished run given a texture stage)."""
        t0 = time.perf_counter()
        run_dir = check_run_dir(run_dir)
        layer = parse_dotlist(overrides) if overrides else None
        fixed = [k for k in (_touched(layer) if layer is not None else [])
                 if any(k == f or k.startswith(f + ".") for f in RESUME_FIXED)]
        if fixed:
            raise DreamgenError(f"{fixed[0]} cannot change when resuming: the checkpoint belongs to the run's "
                                f"{fixed[0].split('.')[0]}; start a new run instead")
        cfg = load_run_config(run_dir / "config.yaml", overrides, **{"trainer.steps": steps})
        before = list(load_run_config(run_dir / "config.yaml").stages)
        if list(cfg.stages[: len(before)]) != before:
            raise DreamgenError(f"stages={list(cfg.stages)}: a resume may add stages after the run's {before}, not "
                                "change them; start a new run instead")
        trainer = _trainer(cfg, guidance)
        trainer.attach(run_dir)
        step = trainer.load_checkpoint()
        log.info("resuming %s at step %d/%d", run_dir, step, trainer.total_steps)
        return cls._start(trainer, run_dir, t0)

    @classmethod
    def from_coarse(cls, coarse_run: Path, overrides: list[str] | None = None, out: Path | None = None) -> Session:
        """A new run whose coarse stage is ``coarse_run``'s finished NeRF: it starts with the DMTet hand-off."""
        t0 = time.perf_counter()
        src_cfg, src_scene, src_step = load_scene(coarse_run)
        if src_scene.stage.name != "nerf":
            raise DreamgenError(f"--from needs a coarse (NeRF) run; {coarse_run} is already in its fine stage")
        layers = [Layer("coarse run", load_yaml(Path(coarse_run) / "config.yaml")),
                  Layer("flag", flag_layer({"stages": ["nerf", "dmtet"], "trainer.steps": src_step,
                                            "out_dir": str(out) if out is not None else None}))]
        if overrides:
            layers.append(Layer("override", parse_dotlist(overrides)))
        cfg = compose_layers(layers).cfg
        trainer = _trainer(cfg)
        trainer.adopt(src_scene, src_step)
        log.info("fine stage of %s", coarse_run)
        return cls._start(trainer, new_run_dir(cfg.out_dir, cfg.prompt), t0)

    @classmethod
    def edit(cls, source_run: Path, prompt: str, loss: str, overrides: list[str] | None = None,
             steps: int | None = None, out: Path | None = None) -> Session:
        """A new run toward ``prompt`` that starts from ``source_run``'s scene, which also serves as the loss's
        source (DDS): the source's settings, minus its loss section (meant for its own loss)."""
        source_run = check_run_dir(source_run)
        base = load_yaml(source_run / "config.yaml")
        layers = [Layer("source run", OmegaConf.create({k: v for k, v in base.items() if k != "loss"})),
                  Layer("flag", flag_layer({"prompt": prompt, "loss.name": loss, "trainer.steps": steps,
                                            "out_dir": str(out) if out is not None else None,
                                            "source_run": str(source_run.resolve())}))]
        if overrides:
            layers.append(Layer("override", parse_dotlist(overrides)))
        cfg = compose_layers(layers).cfg
        log.info("editing %s (%r -> %r)", source_run, base.get("prompt", ""), cfg.prompt)
        return cls.new(cfg)

    @classmethod
    def _start(cls, trainer: Trainer, run_dir: Path, t0: float) -> Session:
        trainer.attach(run_dir)
        atomic_write_text(run_dir / "config.yaml", to_yaml(trainer.cfg))
        log.info("run folder: %s", run_dir)
        return cls(trainer, run_dir, f"dreamgen run --resume {run_dir}", t0)

    # ---- fit and export -----------------------------------------------------------------------------------------
    def fit(self, interrupts: InterruptPolicy | None = None) -> None:
        self.trainer.fit(interrupts, self.resume_command)

    def export(self, formats: list[str] | None = None) -> dict[str, Path]:
        from dreamgen.export import export_mesh

        export_cfg = self.cfg.export
        if formats:
            export_cfg.formats = list(formats)
        return export_mesh(self.trainer.geometry, export_cfg, self.run_dir, metadata=asset_metadata(self.run_dir))

    def run(self, interrupts: InterruptPolicy | None = None) -> dict[str, Any]:
        """Fit, then export; returns the written paths and the timings. An interrupt during export abandons it
        (the checkpoint is complete: ``--resume`` exports again)."""
        self.fit(interrupts)
        t_fit = time.perf_counter() - self.started
        try:
            paths = self.export()
        except KeyboardInterrupt:
            signum = interrupts.signum if interrupts is not None and interrupts.signum else 2
            raise Interrupted(f"interrupted by {signal_name(signum)} while exporting; training is complete: "
                              f"{self.resume_command} exports again", signum) from None
        return {"paths": paths, "seconds": time.perf_counter() - self.started, "fit_seconds": t_fit}


def _trainer(cfg: RunConfig, guidance=None) -> Trainer:
    """The run's trainer, with its guidance (built, or the one given) and, for an edit, its source scene."""
    trainer = Trainer(cfg, guidance if guidance is not None else _build_guidance(cfg))
    if cfg.source_run:
        src_cfg, src_scene, _ = load_scene(Path(cfg.source_run), trainer.device)
        trainer.set_source(src_scene, src_cfg.prompt)
    return trainer


def asset_metadata(run_dir: Path) -> dict[str, Any]:
    """What an exported asset records of its run (``asset.extras``): everything but wall-clock time, so that a run
    and its resumed twin write the same bytes."""
    from dreamgen.runs import run_summary

    return {k: v for k, v in run_summary(run_dir).items() if k != "seconds"}


def _build_guidance(cfg: RunConfig):
    from dreamgen.guidance.auto import build_guidance

    return build_guidance(cfg.guidance, resolve_device(cfg.device))
