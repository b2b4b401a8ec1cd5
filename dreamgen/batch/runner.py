"""One batch item, from its config to its mesh, in whichever process runs it (the CLI's or a Ray worker's).

The guidance model is the expensive part of an item (seconds to load, gigabytes for Stable Diffusion) and is the
same for most items of a batch, so each process keeps the last guidances it built in a small LRU keyed by the
guidance config and device (:func:`cached_guidance`; size 1 in a Ray worker, which owns one device, and the number
of ``--devices`` in the local executor). Guidances are frozen during training (the losses that train a copy call
``trainable_copy``, which deep-copies), so sharing one between consecutive items does not leak state.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamgen.batch.inputs import BatchItem
from dreamgen.batch.manifest import Manifest, now
from dreamgen.errors import DreamgenError, Interrupted
from dreamgen.interrupts import InterruptPolicy

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
    resume_command: str = ""  # what continues the whole batch after an interrupt
    evaluate: bool = False  # score the run against the procedural world right after it (league), in this worker


def make_job(item: BatchItem, out_dir: Path, config: str | None, overrides: list[str], flags: dict | None = None,
             device: str | None = None, resume: bool = False, progress: bool = True,
             resume_command: str = "", evaluate: bool = False) -> ItemJob:
    """Layers, later wins: the batch's flags (--loss, --steps, ...) < the batch's trailing overrides < the item's
    ``overrides`` < its loss/seed/steps fields. ``loss`` names the loss, so (as with ``run --loss``) it starts from
    its own recipe, not from settings a config gives another loss."""
    extra = [f"seed={item.seed}"] if item.seed is not None else []
    extra += [f"trainer.steps={item.steps}"] if item.steps is not None else []
    extra += [f"loss.name={item.loss}"] if item.loss is not None else []
    return ItemJob(name=item.name, prompt=item.prompt, run_dir=str(Path(out_dir) / item.name),
                   config=item.config or config, flags={**(flags or {}), "prompt": item.prompt},
                   overrides=[*overrides, *item.overrides, *extra], device=device, resume=resume, progress=progress,
                   resume_command=resume_command, evaluate=evaluate)


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
_guidance_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()


def cached_guidance(cfg: Any, device: torch.device, size: int = 1) -> Any:
    """``build_guidance`` through this process's LRU of ``size`` guidances."""
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
    return _guidance_cache[key]


def one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return first if isinstance(e, DreamgenError) else f"{type(e).__name__}: {first}".rstrip(": ")


def run_item(job: ItemJob, interrupts: InterruptPolicy | None = None, cache_size: int = 1) -> dict[str, Any]:
    """Run one item through a :class:`~dreamgen.session.Session`; returns the manifest fields of its outcome
    (``status`` done or failed).

    Any exception of the item (bad config, unknown loss, prompt the guidance cannot encode, NaN, out of memory) is
    caught and returned as ``failed`` with a one-line ``error``. With ``interrupts``, SIGINT/SIGTERM stop the item at
    a step boundary with a checkpoint (:class:`Interrupted` propagates, carrying the step).
    """
    from dreamgen.config import load_config
    from dreamgen.device import resolve_device
    from dreamgen.session import Session

    t0 = time.perf_counter()
    run_dir = Path(job.run_dir)
    session: Session | None = None
    resumed_from = None
    try:
        if job.resume:
            cfg = load_run_config_of(run_dir, job)
            guidance = cached_guidance(cfg.guidance, resolve_device(cfg.device), cache_size)
            session = Session.resume(run_dir, guidance=guidance, overrides=_device_override(job))
            resumed_from = session.trainer.step
        else:
            cfg = load_config(job.config, job.overrides, **job.flags)
            if job.device is not None:
                cfg.device = job.device
            cfg.trainer.progress = cfg.trainer.progress and job.progress
            guidance = cached_guidance(cfg.guidance, resolve_device(cfg.device), cache_size)
            session = Session.new(cfg, guidance=guidance, run_dir=run_dir)
        session.resume_command = job.resume_command
        result = session.run(interrupts)
        if job.evaluate:
            from dreamgen.evaluation import evaluate_run

            evaluate_run(run_dir, device=session.trainer.device)  # a GPU run is scored on its GPU
    except Interrupted as e:
        raise ItemInterrupted(session.trainer.step if session else 0, time.perf_counter() - t0, e) from None
    except KeyboardInterrupt:  # a worker cancelled by its driver: the last periodic checkpoint stands
        raise ItemInterrupted(session.trainer.step if session else 0, time.perf_counter() - t0, None) from None
    except Exception as e:  # failure isolation: the batch goes on
        return {"status": "failed", "error": one_line(e), "seconds": time.perf_counter() - t0,
                "step": session.trainer.step if session else 0, "finished": now()}
    records = session.trainer.metrics.read()
    paths = result["paths"]
    mesh = paths.get("glb") or next(iter(paths.values()))
    return {"status": "done", "error": None, "seconds": time.perf_counter() - t0, "step": session.trainer.step,
            "steps": session.trainer.total_steps, "final_loss": records[-1]["loss"] if records else None,
            "resumed_from": resumed_from, "device": str(session.trainer.device),
            "mesh": os.path.relpath(mesh, run_dir.parent), "finished": now()}


def load_run_config_of(run_dir: Path, job: ItemJob):
    from dreamgen.config import load_run_config

    return load_run_config(run_dir / "config.yaml", _device_override(job))


def _device_override(job: ItemJob) -> list[str]:
    """A resumed item runs on the device this invocation gives it (``--devices``), not necessarily its first one."""
    return [f"device={job.device}"] if job.device is not None else []


class ItemInterrupted(Exception):
    """An item stopped by an interrupt; ``step`` is where it stopped (and checkpointed, for a signal)."""

    def __init__(self, step: int, seconds: float, cause: Interrupted | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.seconds, self.cause = step, seconds, cause
