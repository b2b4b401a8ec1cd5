"""Running a list of batch items into a batch folder: the plan against its manifest, the executor, the reports.
``dreamgen batch`` (items from a prompt file) and ``dreamgen league`` (items from a grid) both use it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamgen.batch.executors import run_local, run_processes, run_ray
from dreamgen.batch.inputs import BatchItem
from dreamgen.batch.manifest import Manifest
from dreamgen.batch.report import write_contact_sheet, write_summary
from dreamgen.batch.runner import make_job, plan
from dreamgen.device import usable_cpus
from dreamgen.errors import DreamgenError
from dreamgen.interrupts import InterruptPolicy

log = logging.getLogger("dreamgen")
EXECUTORS = ("local", "processes", "ray")


@dataclass
class BatchOptions:
    config: str | None = None  # config file or preset of items without their own
    overrides: list[str] = field(default_factory=list)  # key=value for every item (an item's own win)
    flags: dict[str, Any] = field(default_factory=dict)  # the job flags (--loss, --guidance, --steps, --seed)
    executor: str = "local"
    devices: list[int] = field(default_factory=list)  # local, processes: CUDA devices, round-robin
    workers: int | None = None  # processes: how many (default: one per CPU core)
    ray_address: str | None = None
    num_gpus: float | None = None  # ray: GPUs per item
    retry_failed: bool = False
    resume_command: str = ""  # what continues the batch after an interrupt
    evaluate: bool = False  # score each run against the procedural world when it finishes (dreamgen league)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise DreamgenError(f"unknown executor {self.executor!r}; valid executors: {', '.join(EXECUTORS)}")
        if self.workers is not None and (self.executor != "processes" or self.workers < 1):
            raise DreamgenError("--workers takes a positive number of processes for --executor processes")


def run_batch(items: list[BatchItem], source: str, out_dir: Path, opts: BatchOptions,
              interrupts: InterruptPolicy | None = None) -> dict[str, Any]:
    """Run what ``items`` still need in ``out_dir`` (skip done, resume interrupted, retry failed if asked), then
    write summary.md, contact_sheet.png and the gallery. Returns the manifest, the counts and the written paths."""
    from dreamgen.gallery import write_gallery

    manifest = Manifest.open(out_dir, items, source, opts.overrides)
    actions = plan(items, manifest, opts.retry_failed)
    todo = [(it, a) for it, a in actions if a in ("new", "resume", "retry")]
    skipped_failed = sum(a == "skip-failed" for _, a in actions)
    log.info("batch %s: %d item(s): %d to run (%d to resume), %d done, %d failed%s", out_dir, len(items), len(todo),
             sum(a == "resume" for _, a in todo), sum(a == "skip-done" for _, a in actions), skipped_failed,
             " (not retried: --retry-failed)" if skipped_failed else "")
    devices = opts.devices
    jobs = [make_job(it, out_dir, opts.config, opts.overrides, opts.flags, resume=a == "resume",
                     device=f"cuda:{devices[k % len(devices)]}" if devices else None,
                     resume_command=opts.resume_command, evaluate=opts.evaluate)
            for k, (it, a) in enumerate(todo)]
    if jobs and opts.executor == "local":
        run_local(manifest, jobs, devices=[f"cuda:{d}" for d in devices] if devices else None, interrupts=interrupts)
    elif jobs and opts.executor == "processes":
        run_processes(manifest, jobs, opts.workers or usable_cpus(), interrupts=interrupts)
    elif jobs:
        run_ray(manifest, jobs, opts.ray_address, opts.num_gpus, interrupts=interrupts)
    names = [it.name for it in items]
    return {"manifest": manifest, "counts": manifest.counts(names), "summary": write_summary(manifest, names),
            "contact_sheet": write_contact_sheet(manifest, names), "gallery": write_gallery(out_dir)}
