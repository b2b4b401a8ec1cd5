"""The optimisation loop: render random cameras, score them with a distillation loss, step Adam.

One step (the hot path): cameras → render → guidance encode → loss (guidance forward inside) → backward → optimiser.
Each phase is timed; ``scripts/bench.py`` reports the breakdown. Checkpoints hold everything needed to continue
bit-for-bit on CPU (parameters, optimiser, the loss's own state, the run's random streams), in types that load with
``torch.load(weights_only=True)``.

Randomness is per run (:class:`RunRandom`): the run's CPU and CUDA generator states are installed around every
piece of the run's own work and captured after it, so nothing else in the process (building or caching a guidance,
another run in a batch worker) shifts the run's random stream, and a checkpoint restores it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgen import registry
from dreamgen.cameras import Cameras
from dreamgen.checkpoint import load_checkpoint, save_checkpoint
from dreamgen.device import resolve_device
from dreamgen.errors import ConfigError, DreamgenError, Interrupted, NonFiniteError
from dreamgen.interrupts import InterruptPolicy, signal_name
from dreamgen.losses.base import LossInput
from dreamgen.progress import Progress
from dreamgen.prompts import PerpNeg, PromptSet
from dreamgen.runs import MetricsLog, atomic_write_bytes, image_grid, png_bytes, timed
from dreamgen.scene import Scene, total_steps
from dreamgen.schema import bounded, scheduled

log = logging.getLogger("dreamgen")

PHASES = ("render", "encode", "loss", "backward", "optimizer")
DIVERGED = 1e4  # |parameter| beyond which a run has blown up (hash tables and MLP weights live around 1e-2..10)


@dataclass
class TrainerConfig:
    steps: int = bounded(1000, ge=1)
    lr: float = bounded(0.01, gt=0.0)  # hash-grid tables
    lr_net: float = bounded(0.001, gt=0.0)  # density/albedo MLPs
    lr_background: float = bounded(0.001, ge=0.0)
    adam_betas: list[float] = bounded(factory=lambda: [0.9, 0.99], ge=0.0, lt=1.0)
    adam_eps: float = bounded(1e-15, gt=0.0)
    checkpoint_every: int = bounded(100, ge=1)
    preview_every: int = bounded(100, ge=0)  # 0 disables intermediate previews (the final strip is always written)
    preview_views: int = bounded(8, ge=1)
    preview_resolution: int = bounded(64, ge=8)
    log_every: int = bounded(1, ge=1)
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # Regulariser weights; each may be a schedule [start_step, v0, v1, end_step].
    lambda_orient: Any = bounded(0.0, ge=0.0)
    lambda_sparsity: Any = bounded(0.0, ge=0.0)
    lambda_opacity: Any = bounded(0.0, ge=0.0)
    particles: int = bounded(1, ge=1)  # independent 3-D particles sharing one loss (VSD particles, RSD)
    progress: bool = True
    progress_every: int = bounded(100, ge=1)  # steps between progress lines when stderr is not a terminal

    def check(self, key: str) -> None:
        if len(self.adam_betas) != 2:
            raise ConfigError(f"{key}.adam_betas={list(self.adam_betas)}: needs two values, e.g. [0.9, 0.99]")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunRandom:
    """The run's own CPU and CUDA random states (see the module docstring)."""

    def __init__(self, seed: int, device: torch.device):
        self.cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if self.cuda else []):
            torch.manual_seed(seed)
            self.cpu_state = torch.get_rng_state()
            self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.cuda else None

    def restore(self, states: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(states[0])
        if self.cuda:
            torch.cuda.set_rng_state(states[1], self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this run's streams; the process's own states are put back afterwards."""
        outside = self.snapshot()
        self.restore((self.cpu_state, self.cuda_state))
        try:
            yield
        finally:
            self.cpu_state, self.cuda_state = self.snapshot()
            self.restore(outside)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"cpu": self.cpu_state, "cuda": self.cuda_state}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        self.cpu_state = state["cpu"].cpu()
        if self.cuda and state.get("cuda") is not None:
            self.cuda_state = state["cuda"].cpu()


class Trainer:
    """Owns the components of one run and writes its folder (``attach`` names the folder after the components are
    built, so a failure while building them leaves no empty folder behind)."""

    def __init__(self, cfg, guidance):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.guidance = guidance
        self.random = RunRandom(cfg.seed, self.device)
        seed_everything(cfg.seed)  # numpy / python streams of libraries that draw from them
        with self.random.active():
            self.view_prompts = self._debiased_prompts()
            self.prompts = PromptSet(guidance, cfg.prompt, cfg.prompts, view_prompts=self.view_prompts)
            self.scene = Scene(cfg, self.device)
            self.run_loss = self._make_loss(cfg.loss)
            self.loss = self._stage_loss()
        self.camera_gen = torch.Generator().manual_seed(cfg.seed)
        self.sampler = self.scene.stage.sampler()
        self.optimizer = self._optimizer()
        self.source: tuple[Scene, PromptSet] | None = None
        self.step = 0
        self.run_dir: Path | None = None
        self.metrics: MetricsLog | None = None
        self._warned_divergence = False
        self.checkpoint_step: int | None = None  # step of the newest checkpoint written or loaded
        self._preview: tuple[tuple[int, int], bytes] | None = None  # (step, stage) and PNG of the latest preview
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" and cfg.trainer.mixed_precision else nullcontext())
        if self.device.type == "cuda":  # fixed shapes per resolution: let cuDNN pick its fastest convolutions
            torch.backends.cudnn.benchmark = True

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

    def attach(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    @property
    def particles(self):
        return self.scene.particles

    @property
    def renderers(self):
        return self.scene.renderers

    @property
    def geometry(self):
        return self.scene.particles[0]

    @property
    def total_steps(self) -> int:
        return total_steps(self.scene.stages)

    def stage_end(self, index: int) -> int:
        """The step at which stage ``index`` ends."""
        return sum(s.steps for s in self.scene.stages[: index + 1])

    def _make_loss(self, loss_cfg):
        return registry.lookup("loss", loss_cfg.name).cls(loss_cfg, self.guidance).to(self.device)

    def _stage_loss(self):
        """The current stage's own loss (the texture stage's), else the run's."""
        loss_cfg = self.scene.stage.loss_config()
        return self.run_loss if loss_cfg is None else self._make_loss(loss_cfg)

    def _stage_guidance(self) -> None:
        """Load the current stage's own prior weights, if it names any (``texture.weights``), with the prompts encoded
        by them: each set of weights has its own text embedding."""
        weights = self.scene.stage.guidance_weights()
        if not weights or weights == getattr(self.guidance.cfg, "weights", None):
            return
        from dreamgen.guidance.auto import build_guidance

        self.guidance = build_guidance(replace(self.guidance.cfg, weights=weights), self.device)
        self.prompts = PromptSet(self.guidance, self.cfg.prompt, self.cfg.prompts, view_prompts=self.view_prompts)

    def _optimizer(self) -> torch.optim.Adam:
        tc = self.cfg.trainer
        return torch.optim.Adam(self.scene.param_groups(), betas=tuple(tc.adam_betas), eps=tc.adam_eps)

    def enter_stage(self, index: int, handoff: bool = True) -> None:
        """Switch to stage ``index``: geometry handed off (or empty, for a checkpoint to fill), its renderer, its loss,
        a fresh optimiser at its learning rates, its camera sampler."""
        t0 = time.perf_counter()
        with self.random.active():
            self.scene.enter(index, self.device, handoff)
            self._stage_guidance()
            self.loss = self._stage_loss()
        self.optimizer = self._optimizer()
        self.sampler = self.scene.stage.sampler()
        if handoff:
            log.info("stage %s: hand-off in %.1f s, %d more steps", self.scene.stage.name, time.perf_counter() - t0,
                     self.scene.stage.steps)

    def adopt(self, scene: Scene, step: int) -> None:
        """Continue from another run's scene as of its ``step`` (``run --from``: a finished coarse stage)."""
        self.scene.load_state_dict(scene.state_dict())
        self.step = step

    def set_source(self, scene: Scene, prompt: str) -> None:
        """Editing: start from ``scene`` and keep a frozen copy of it, rendered at every step's cameras with the
        same random draws, as the source of the loss (``LossInput.source_x``/``source_cond``, e.g. DDS)."""
        self.scene.load_state_dict(scene.state_dict())
        scene = scene.to(self.device).eval().requires_grad_(False)
        with self.random.active():
            self.source = (scene, PromptSet(self.guidance, prompt, self.cfg.prompts))

    # ---- one optimisation step ----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        """One step on the run's random streams."""
        with self.random.active():
            return self._train_step()

    def _train_step(self) -> dict[str, Any]:
        step = self.step
        sync = self.device.type == "cuda"
        times: dict[str, float] = {}
        cams = self.sampler.sample(step, generator=self.camera_gen).to(self.device)
        for r in self.renderers:
            r.update_occupancy(step)

        draws = self.random.snapshot()  # the source is rendered with the same draws (shading, light, jitter)
        # Mixed precision for the renderer only: the guidance runs in its own dtype (fp16 SD weights under a bf16
        # autocast would be cast to bf16 at every layer of every call).
        with self.autocast:
            outs, times["render"] = timed(lambda: [r(cams, shading="random", train=True, step=step)
                                                   for r in self.renderers], sync)
        rgb = torch.cat([o["rgb"] for o in outs]).float()  # [P*B,H,W,3], particle-major
        x, times["encode"] = timed(lambda: self.guidance.encode_images(rgb), sync)
        inp = self._loss_input(x, rgb, outs, cams)
        if self.source is not None:
            inp.source_x, inp.source_cond, inp.source_perp_neg = self._source_input(cams, draws)
        loss_out, times["loss"] = timed(lambda: self.loss(inp), sync)
        reg = self._regularisers(outs, step)
        total = loss_out.loss + sum(reg.values())

        if not torch.isfinite(total):
            raise NonFiniteError(f"the loss became {total.item()} at step {step}; lower trainer.lr or the guidance "
                                 f"scale ({self._resume_hint()})")
        self.optimizer.zero_grad(set_to_none=True)
        _, times["backward"] = timed(total.backward, sync)
        _, times["optimizer"] = timed(self.optimizer.step, sync)
        self.step = step + 1
        return {"step": self.step, "stage": self.scene.stage.name, "loss": float(total.detach()),
                "distill": float(loss_out.loss.detach()), **{k: float(v.detach()) for k, v in reg.items()},
                **loss_out.logs, **{f"time_{k}": v for k, v in times.items()}}

    def _resume_hint(self) -> str:
        if self.checkpoint_step is None:
            return "no checkpoint was written yet"
        return (f"the checkpoint of step {self.checkpoint_step} in {self.run_dir / 'checkpoints'} is intact and can be "
                "resumed with --resume")

    def _loss_input(self, x, rgb, outs, cams: Cameras) -> LossInput:
        P, B = len(self.particles), len(cams)
        cond, perp_neg = self.prompts.for_cameras(self.guidance, cams, P)
        return LossInput(
            x=x, cond=cond, uncond=self.guidance.condition(self.prompts.uncond_batch(P * B), cams), step=self.step,
            total_steps=self.total_steps, camera=cams.flat().repeat(P, 1), prompts=self.prompts, rgb=rgb,
            opacity=torch.cat([o["opacity"] for o in outs]),
            points=torch.cat([o["points"] for o in outs]).detach(), n_particles=P,
            t_bounds=self.scene.stage.t_bounds(self.step), perp_neg=perp_neg)

    @torch.no_grad()
    def _source_input(self, cams: Cameras, draws) -> tuple[torch.Tensor, torch.Tensor, PerpNeg | None]:
        """The frozen source rendered with the same random draws as this step's render."""
        scene, prompts = self.source
        after = self.random.snapshot()
        self.random.restore(draws)
        with self.autocast:
            rgb = scene.renderers[0](cams, shading="random", train=True, step=self.step)["rgb"].float()
        self.random.restore(after)
        P = len(self.particles)
        cond, perp_neg = prompts.for_cameras(self.guidance, cams, P)
        return self.guidance.encode_images(rgb).repeat(P, 1, 1, 1), cond, perp_neg

    def _regularisers(self, outs: list[dict], step: int) -> dict[str, torch.Tensor]:
        tc, fine = self.cfg.trainer, self.cfg.fine
        reg = {}
        for key, lam in (("orient_loss", tc.lambda_orient), ("sparsity_loss", tc.lambda_sparsity),
                         ("opacity_loss", tc.lambda_opacity),
                         ("normal_consistency_loss", fine.lambda_normal_consistency),
                         ("laplacian_loss", fine.lambda_laplacian)):
            w = scheduled(lam, step)
            if w > 0 and key in outs[0] and outs[0][key].requires_grad:  # not on a frozen surface
                reg[key] = w * sum(o[key] for o in outs) / len(outs)
        return reg

    # ---- loop ---------------------------------------------------------------------------------------------------
    def fit(self, interrupts: InterruptPolicy | None = None, resume_command: str = "") -> None:
        """Train to ``total_steps``. With ``interrupts``, SIGINT/SIGTERM end the loop at the next step boundary with a
        checkpoint of that step and :class:`Interrupted` (its message ends with ``resume_command``)."""
        tc, end = self.cfg.trainer, self.total_steps
        bar = Progress(end, self.step, enabled=tc.progress, log_every=tc.progress_every)
        try:
            with interrupts.deferred() if interrupts else nullcontext():
                while self.step < end:
                    index = self.scene.stage_index
                    if self.step >= self.stage_end(index) and index + 1 < len(self.scene.stages):
                        self.save_preview(self.run_dir / "previews" / f"{self.scene.stage.name}.png")
                        self.enter_stage(index + 1)
                    record = self.train_step()
                    self._after_step(record, end)
                    bar.update(1, loss=f"{record['loss']:.4g}")
                    if interrupts is not None and interrupts.pending:
                        if self.step % tc.checkpoint_every and self.step != end:
                            self.save_checkpoint()
                        raise Interrupted(f"interrupted by {signal_name(interrupts.signum)} at step {self.step}/"
                                          f"{end}; checkpoint saved; continue with: {resume_command}",
                                          interrupts.signum)
        finally:
            bar.close()
        self.save_preview(self.run_dir / "previews" / "final.png")

    def _after_step(self, record: dict[str, Any], end: int) -> None:
        tc = self.cfg.trainer
        if self.step % tc.log_every == 0 or self.step == end:
            self.metrics.write(record)
        if tc.preview_every and self.step % tc.preview_every == 0:
            self.save_preview(self.run_dir / "previews" / f"step_{self.step:06d}.png")
        if self.step % tc.checkpoint_every == 0 or self.step == end:
            self.save_checkpoint()
            self._check_divergence()

    def _check_divergence(self) -> None:
        """Warn (once) when the parameters blew up without becoming NaN (e.g. far too high a learning rate)."""
        if self._warned_divergence:
            return
        peak = max((float(p.detach().abs().max()) for p in self.scene.parameters() if p.numel()), default=0.0)
        if peak > DIVERGED:
            self._warned_divergence = True
            log.warning("warning: the optimisation diverged: a parameter reached |%.3g| at step %d (normal: < 10); "
                        "the result will be garbage; lower trainer.lr (now %g)", peak, self.step, self.cfg.trainer.lr)

    # ---- previews -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, n_views: int, resolution: int, shading: str = "lambertian", particle: int = 0):
        cams = self.sampler.orbit(n_views, resolution).to(self.device)
        return self.renderers[particle](cams, shading=shading, train=False)

    @torch.no_grad()
    def save_preview(self, path: Path) -> None:
        """Orbit renders (shaded, albedo, normals per particle) as one PNG. A second preview of the same step (a
        stage's last step, the final step) is the first one's bytes, not another render."""
        when = (self.step, self.scene.stage_index)
        if self._preview is not None and self._preview[0] == when:
            atomic_write_bytes(path, self._preview[1])
            return
        tc = self.cfg.trainer
        rows = []
        with self.random.active():
            for p in range(len(self.particles)):
                shaded = self.render_views(tc.preview_views, tc.preview_resolution, "lambertian", p)
                albedo = self.render_views(tc.preview_views, tc.preview_resolution, "albedo", p)
                rows += [shaded["rgb"], albedo["rgb"]]
                if shaded.get("normal") is not None:
                    rows.append(shaded["normal"] * 0.5 + 0.5)
        png = png_bytes(image_grid([r.float().cpu() for r in rows]))
        atomic_write_bytes(path, png)
        self._preview = (when, png)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        save_checkpoint({
            "step": self.step,
            "stage": self.scene.stage.name,
            "scene": self.scene.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss": self.loss.checkpoint_state(),
            "random": self.random.state_dict(),
            "camera": self.camera_gen.get_state(),
        }, self.run_dir / "checkpoints")
        self.checkpoint_step = self.step

    def load_checkpoint(self) -> int:
        """Restore the newest usable checkpoint of the attached run folder; returns its step."""
        state, path = load_checkpoint(self.run_dir / "checkpoints", self.device)
        names = [s.name for s in self.scene.stages]
        if state.get("stage", "nerf") not in names:
            raise DreamgenError(f"{path} is in stage {state.get('stage')!r}, which this run's stages {names} lack")
        index = names.index(state.get("stage", "nerf"))
        if index != self.scene.stage_index:
            self.enter_stage(index, handoff=False)
        try:
            self.scene.load_state_dict(state["scene"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.loss.load_checkpoint_state(state["loss"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise DreamgenError(f"{path} does not fit this run's config (was a geometry or loss setting changed?): "
                                f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
        self.random.load_state_dict(state["random"])
        self.camera_gen.set_state(state["camera"].cpu())  # a CPU generator; the checkpoint loads onto the run's device
        self.step = self.checkpoint_step = int(state["step"])
        self.metrics.truncate_after(self.step)
        return self.step


def phase_summary(records: list[dict[str, Any]], skip: int = 1) -> dict[str, float]:
    """Mean seconds per phase over the records (skipping warm-up ones) and steps/s."""
    recs = records[skip:] if len(records) > skip else records
    out = {p: float(np.mean([r[f"time_{p}"] for r in recs])) for p in PHASES if f"time_{p}" in recs[0]}
    total = sum(out.values())
    out["total"] = total
    out["steps_per_s"] = 1.0 / total if total > 0 else math.inf
    return out
