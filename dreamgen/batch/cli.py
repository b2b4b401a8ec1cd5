"""The ``dreamgen batch`` command (registered in dreamgen/cli.py). Heavy modules are imported inside the command."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer

from dreamgen.errors import DreamgenError

log = logging.getLogger("dreamgen")


def batch(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Prompt file: .txt (one prompt a line), .jsonl or .yaml (items with "
                                          "prompt, name, loss, seed, steps, config, overrides)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides for every item (an item's own "
                                                               "settings win), e.g. trainer.steps=500"),
    out: Optional[Path] = typer.Option(None, "--out", help="Batch folder: manifest.json, summary.md, "
                                                           "contact_sheet.png, index.html (the gallery) and one "
                                                           "run folder per item (default outputs/<file stem>)."),
    config: Optional[str] = typer.Option(None, "--config", help="Config file or preset for items without their "
                                                                "own 'config'."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Distillation loss of items without their own 'loss'."),
    guidance: Optional[str] = typer.Option(None, "--guidance", help="auto | shapes | stable-diffusion | a pipeline "
                                                                    "folder or hub id, for every item."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="trainer.steps of items without their own."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of items without their own."),
    check: bool = typer.Option(False, "--check", help="Validate the file and every item's config, show what a run "
                                                      "would do, run nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed items again, from scratch."),
    executor: str = typer.Option("local", "--executor", help="local (sequential, in this process) | processes "
                                                             "(--workers at once, sharing this machine's GPU) | ray"),
    devices: Optional[str] = typer.Option(None, "--devices", help="local, processes: CUDA devices to spread items "
                                                                  "over, round-robin, e.g. 0,1"),
    workers: Optional[int] = typer.Option(None, "--workers", help="processes: how many items run at once (default: "
                                                                  "one per CPU core)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: the cluster to join, e.g. auto; "
                                                                          "default: start a local instance"),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="ray: GPUs per item (default 1 when the "
                                                                      "cluster has GPUs, else 0)"),
) -> None:
    """Run every prompt of FILE, each into its own run folder under --out, tracked in a resumable manifest.json.

    Running the same command again skips done items, resumes interrupted ones from their last checkpoint (after
    Ctrl-C, SIGTERM or a kill) and, with --retry-failed, restarts failed ones. Problems of the file itself (bad
    JSON/YAML, empty prompt, duplicate name, unknown field) stop the batch before anything runs, all listed with
    their line numbers. A problem of one item's configuration (unknown loss, misspelt override key) fails only
    that item, recorded in the manifest, so one typo does not hold up the rest; --check reports those too, up front.
    Exits non-zero if any item failed. --loss, --guidance, --config, --steps and --seed mean what they mean for
    `dreamgen run`; an item's own fields win over them.
    """
    from dreamgen.batch.inputs import BatchInputError, read_batch_file
    from dreamgen.batch.run import BatchOptions, run_batch
    from dreamgen.config import job_flags

    t0 = time.perf_counter()
    if executor == "ray" and devices:
        raise DreamgenError("--devices is for the local and processes executors; with --executor ray use --num-gpus")
    opts = BatchOptions(config=config, overrides=list(overrides or []), flags=job_flags(loss, guidance, steps, seed),
                        executor=executor, devices=_devices(devices), workers=workers, ray_address=ray_address,
                        num_gpus=num_gpus, retry_failed=retry_failed, resume_command=_command_line())
    try:
        items = read_batch_file(file)
    except BatchInputError as e:
        for p in e.problems:
            typer.echo(p, err=True)
        raise
    out_dir = Path(out) if out is not None else Path("outputs") / file.stem
    if check:
        _check(file, items, out_dir, opts)
        return
    done = run_batch(items, str(file.resolve()), out_dir, opts, ctx.obj)
    counts, manifest = done["counts"], done["manifest"]
    if counts["failed"]:
        raise DreamgenError(f"{counts['done']} done, {counts['failed']} failed: see {manifest.path}")
    typer.echo(f"{counts['done']} done in {time.perf_counter() - t0:.1f} s: {done['summary']}"
               + (f", {done['contact_sheet']}" if done["contact_sheet"] else "")
               + f", {done['gallery']} (dreamgen view {out_dir} --serve)")


def _devices(devices: Optional[str]) -> list[int]:
    if not devices:
        return []
    try:
        ids = [int(d) for d in devices.split(",") if d.strip()]
    except ValueError:
        raise DreamgenError(f"--devices takes CUDA device numbers separated by commas (e.g. 0,1), not {devices!r}")
    import torch

    n = torch.cuda.device_count()
    bad = [d for d in ids if not 0 <= d < n]
    if bad:
        raise DreamgenError(f"--devices {devices}: there is no CUDA device {bad[0]} (this machine has {n})")
    return ids


def _command_line() -> str:
    """This invocation as a shell command (what resumes a batch after an interrupt)."""
    import shlex
    import sys

    return shlex.join(["dreamgen", *sys.argv[1:]])


def _check(file: Path, items, out_dir: Path, opts) -> None:
    """--check: every item's config is composed (not run); prints what a run would do with each item."""
    from dreamgen.batch.manifest import Manifest
    from dreamgen.batch.runner import make_job, plan
    from dreamgen.config import load_config

    problems = []
    for it in items:
        job = make_job(it, out_dir, opts.config, opts.overrides, opts.flags)
        try:
            load_config(job.config, job.overrides, **job.flags)
        except DreamgenError as e:
            problems.append(f"{file.name}:{it.line}: item '{it.name}': {e}")
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        raise DreamgenError(f"{file}: {len(problems)} item(s) with config problems (listed above)")
    manifest = Manifest.open(out_dir, items, str(file.resolve()), opts.overrides, write=False)
    for it, action in plan(items, manifest, opts.retry_failed):
        typer.echo(f"{it.name}\t{action}\t{it.prompt}")
    typer.echo(f"{file}: {len(items)} item(s) OK")
