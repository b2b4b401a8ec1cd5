"""One batch item, from its config to its mesh, in whichever process runs it (the CLI's or a Ray worker's).

The guidance model is the expensive part of an item (seconds to load, gigabytes for Stable Diffusion) and is the
same for most items of a batch, so each process keeps the last guidances it built in a small LRU keyed by the
guidance config and device (:func:`cached_guidance`; size 1 in a Ray worker, which owns one device, and the number
of ``--devices`` in the local executor). Guidances are frozen during training (the losses that train a copy call
``trainable_copy``, which deep-copies), so sharing one between consecutive items does not leak state.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamgen.batch.inputs import BatchItem
from dreamgen.batch.manifest import Manifest, now
from dreamgen.errors import DreamgenError
from dreamgen.train import Trainer

log = logging.getLogger("dreamgen")


@dataclass
class ItemJob:
    """Everything a process needs to run one item (picklable: it is sent to Ray workers)."""

    name: str
    prompt: str
    run_dir: str
    config: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)  # load_config flags
    overrides: list[str] = field(default_factory=list)
    device: str | None = None  # overrides the config's device (local --devices)
    resume: bool = False  # continue from run_dir's checkpoint (otherwise the driver has emptied run_dir)
    progress: bool = True  # the per-item step bar


def make_job(item: BatchItem, out_dir: Path, config: str | None, overrides: list[str], device: str | None = None,
             resume: bool = False, progress: bool = True) -> ItemJob:
    """Layers, later wins: the batch's trailing overrides < the item's ``overrides`` < its seed/steps/loss fields.

    ``loss`` is also a load_config flag so that, as with ``run --loss``, the named loss starts from its own defaults,
    not from the settings that default.yaml or the config file give another loss.
    """
    extra = [f"seed={item.seed}"] if item.seed is not None else []
    extra += [f"trainer.steps={item.steps}"] if item.steps is not None else []
    extra += [f"loss.name={item.loss}"] if item.loss is not None else []
    return ItemJob(name=item.name, prompt=item.prompt, run_dir=str(Path(out_dir) / item.name),
                   config=item.config or config, flags={"prompt": item.prompt, "loss.name": item.loss},
                   overrides=[*overrides, *item.overrides, *extra], device=device, resume=resume, progress=progress)


def plan(items: list[BatchItem], manifest: Manifest, retry_failed: bool) -> list[tuple[BatchItem, str]]:
    """What this invocation does with each item: new, resume, retry, skip-done or skip-failed."""
    out = []
    for it in items:
        rec = manifest.records[it.name]
        ckpt = manifest.out_dir / rec.run_dir / "checkpoints" / "last.pt"
        if rec.status == "done":
            action = "skip-done"
        elif rec.status == "failed":
            action = "retry" if retry_failed else "skip-failed"
        else:  # queued, running (the process died) or interrupted
            action = "resume" if ckpt.exists() else "new"
        out.append((it, action))
    return out


# ---- per-process guidance cache -------------------------------------------------------------------------------------
_guidance_cache: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()


def cached_guidance(cfg: Any, device: torch.device, size: int = 1) -> tuple[Any, Any]:
    """``build_guidance`` through this process's LRU of ``size`` guidances: returns (guidance, concrete config)."""
    from dreamgen.guidance.auto import build_guidance

    key = (repr(cfg), str(device))
    if key in _guidance_cache:
        _guidance_cache.move_to_end(key)
    else:
        evicted = False
        while len(_guidance_cache) >= max(1, size):  # free the old weights before loading new ones
            _guidance_cache.popitem(last=False)
            evicted = True
        if evicted and torch.cuda.is_available():
            torch.cuda.empty_cache()
        _guidance_cache[key] = build_guidance(cfg, device)
    guidance, concrete = _guidance_cache[key]
    return guidance, copy.deepcopy(concrete)


# ---- signals --------------------------------------------------------------------------------------------------------
class SignalGuard:
    """SIGINT and SIGTERM raise KeyboardInterrupt, as Ctrl-C does, so both checkpoint and stop the batch cleanly.

    Inside a training step the interrupt waits for the step's end: raised between the optimiser update and the step
    counter's increment it would let the checkpoint written on the way out pair new parameters with an old step.
    A second signal during the same step interrupts at once.
    """

    def __init__(self) -> None:
        self.in_step = False
        self.pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.in_step and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pending:
            raise KeyboardInterrupt


class _GuardedTrainer(Trainer):
    def __init__(self, cfg, guidance, guard: SignalGuard | None):
        self.guard = guard
        super().__init__(cfg, guidance=guidance)

    def train_step(self) -> dict[str, float]:
        if self.guard is None:
            return super().train_step()
        self.guard.check()
        self.guard.in_step = True
        try:
            return super().train_step()
        finally:
            self.guard.in_step = False


class ItemInterrupted(KeyboardInterrupt):
    """An item stopped by an interrupt after its checkpoint was written."""

    def __init__(self, step: int, seconds: float):
        super().__init__(f"interrupted at step {step}")
        self.step, self.seconds = step, seconds


def one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return first if isinstance(e, DreamgenError) else f"{type(e).__name__}: {first}".rstrip(": ")


def run_item(job: ItemJob, guard: SignalGuard | None = None, cache_size: int = 1) -> dict[str, Any]:
    """Run one item; returns the manifest fields of its outcome (``status`` done or failed).

    Any exception of the item (bad config, unknown loss, prompt the guidance cannot encode, NaN, out of memory) is
    caught and returned as ``failed`` with a one-line ``error``. KeyboardInterrupt writes a checkpoint (when
    training had begun) and is re-raised as :class:`ItemInterrupted`.
    """
    from dreamgen.config import load_config
    from dreamgen.export import export_mesh
    from dreamgen.train import resolve_device

    t0 = time.perf_counter()
    run_dir = Path(job.run_dir)
    trainer: _GuardedTrainer | None = None
    fitting = False
    try:
        cfg = load_config(job.config, job.overrides, **job.flags)
        cfg.trainer.progress = cfg.trainer.progress and job.progress
        if job.device is not None:
            cfg.device = job.device
        device = resolve_device(cfg.device)
        guidance, cfg.guidance = cached_guidance(cfg.guidance, device, cache_size)
        trainer = _GuardedTrainer(cfg, guidance, guard)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "previews").mkdir(exist_ok=True)
        trainer.attach(run_dir)
        resumed_from = None
        if job.resume:
            trainer.load_checkpoint()
            resumed_from = trainer.step
            log.info("%s: resuming at step %d/%d", job.name, trainer.step, cfg.trainer.steps)
        fitting = True
        trainer.fit()
        paths = export_mesh(trainer.geometry, cfg.export, run_dir)
    except KeyboardInterrupt:
        if fitting:
            trainer.save_checkpoint()
        raise ItemInterrupted(trainer.step if trainer else 0, time.perf_counter() - t0) from None
    except Exception as e:  # failure isolation: the batch goes on
        return {"status": "failed", "error": one_line(e), "seconds": time.perf_counter() - t0,
                "step": trainer.step if trainer else 0, "finished": now()}
    records = trainer.metrics.read()
    mesh = paths.get("glb") or next(iter(paths.values()))
    return {"status": "done", "error": None, "seconds": time.perf_counter() - t0, "step": trainer.step,
            "steps": cfg.trainer.steps, "final_loss": records[-1]["loss"] if records else None,
            "resumed_from": resumed_from, "device": str(device),
            "mesh": os.path.relpath(mesh, run_dir.parent), "finished": now()}
