"""Executors: where a batch's items run. The driver (this process) alone writes the manifest, after every change.

- ``local``: items one after another in this process; with ``--devices 0,1`` item k runs on ``cuda:{devices[k % n]}``.
- ``ray``: one Ray actor per device slot (``num_gpus`` each, 0 on CPUs); each item is a task on an idle actor. Actors,
  not plain tasks: a process keeps its GPU and its guidance cache for the whole batch, so the weights load once per
  worker (Ray restarts the process of a GPU *task* after every call, which would reload them for every item).
  On a multi-node cluster the batch folder must be on storage every node sees: workers write the run folders.
"""

from __future__ import annotations

import logging
import shutil
from collections import deque
from typing import Any

import torch

from dreamgen.batch.manifest import Manifest, now
from dreamgen.batch.runner import ItemInterrupted, ItemJob, SignalGuard, run_item
from dreamgen.errors import DreamgenError

log = logging.getLogger("dreamgen")


def _interrupted(name: str, step: int) -> DreamgenError:
    return DreamgenError(f"interrupted during '{name}' at step {step}; run the same command again to resume")


def _start(manifest: Manifest, job: ItemJob) -> None:
    """Mark the item running. A fresh attempt first empties its run folder (a failed or unfinished attempt's files
    must not mix in), while the record still says failed/queued: an interrupt here cannot leave it resumable from
    the old checkpoint."""
    if not job.resume:
        shutil.rmtree(job.run_dir, ignore_errors=True)
    rec = manifest.records[job.name]
    fields: dict[str, Any] = {"status": "running", "error": None, "attempts": rec.attempts + 1, "finished": None,
                              "device": job.device}
    if not job.resume:
        fields.update(started=now(), seconds=0.0, step=0, final_loss=None, mesh=None, resumed_from=None)
    manifest.update(job.name, **fields)


def _finish(manifest: Manifest, job: ItemJob, result: dict[str, Any]) -> None:
    result = dict(result)
    result["seconds"] = round(manifest.records[job.name].seconds + result["seconds"], 3)
    manifest.update(job.name, **result)
    rec = manifest.records[job.name]
    if rec.status == "done":
        log.info("%s: done, step %d, loss %.4g, %.1f s", job.name, rec.step, rec.final_loss or float("nan"),
                 rec.seconds)
    else:
        log.info("%s: failed: %s", job.name, rec.error)


def _items_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="batch", unit="item", dynamic_ncols=True, leave=True, position=0)


def run_local(manifest: Manifest, jobs: list[ItemJob], devices: list[str] | None = None) -> None:
    """Run ``jobs`` in order in this process. SIGINT/SIGTERM checkpoint the current item, mark it interrupted and
    raise DreamgenError."""
    bar = _items_bar(len(jobs))
    try:
        with SignalGuard() as guard:
            for job in jobs:
                _start(manifest, job)
                try:
                    result = run_item(job, guard, cache_size=len(devices) if devices else 1)
                except ItemInterrupted as e:
                    rec = manifest.records[job.name]
                    manifest.update(job.name, status="interrupted", step=e.step,
                                    seconds=round(rec.seconds + e.seconds, 3))
                    raise _interrupted(job.name, e.step) from None
                _finish(manifest, job, result)
                if result["status"] == "failed" and torch.cuda.is_available():
                    torch.cuda.empty_cache()  # an out-of-memory item must not starve the next one
                bar.update(1)
                guard.check()  # a signal during the item's last step stops the batch here
    except KeyboardInterrupt:
        raise DreamgenError("interrupted between items; run the same command again to continue") from None
    finally:
        bar.close()


class ItemWorker:
    """A Ray actor: one process on one device slot, running items one at a time with its own guidance cache."""

    def run(self, job: ItemJob) -> dict[str, Any]:
        return run_item(job, guard=None, cache_size=1)


def run_ray(manifest: Manifest, jobs: list[ItemJob], address: str | None, num_gpus: float | None) -> None:
    """Run ``jobs`` on Ray: joins ``address`` (e.g. ``auto``) or starts a local instance (unless one is already
    initialised in this process, which is then used and left running)."""
    try:
        import ray
    except ImportError:
        raise DreamgenError("the ray executor needs Ray: pip install 'dreamgen[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    pending: dict[Any, ItemJob] = {}
    bar = _items_bar(len(jobs))
    try:
        with SignalGuard():
            resources = ray.cluster_resources()
            if num_gpus is None:
                num_gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
            slots = resources.get("GPU", 0) / num_gpus if num_gpus > 0 else resources.get("CPU", 1)
            if slots < 1:
                raise DreamgenError(f"the Ray cluster has {resources.get('GPU', 0):g} GPUs: not enough for "
                                    f"--num-gpus {num_gpus:g} per item")
            n_workers = max(1, min(len(jobs), int(slots)))
            worker_cls = ray.remote(num_cpus=1, num_gpus=num_gpus)(ItemWorker)
            log.info("ray: %d worker(s), %g GPU each, for %d item(s)", n_workers, num_gpus, len(jobs))
            idle = [worker_cls.remote() for _ in range(n_workers)]
            actor_of: dict[Any, Any] = {}
            queue = deque(jobs)
            for job in jobs:  # no per-item step bars: many workers' bars would interleave in the driver's log
                job.progress = False
            while queue or pending:
                while queue and idle:
                    job, actor = queue.popleft(), idle.pop()
                    _start(manifest, job)
                    ref = actor.run.remote(job)
                    pending[ref], actor_of[ref] = job, actor
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                job, actor = pending.pop(ref), actor_of.pop(ref)
                try:
                    result = ray.get(ref)
                    idle.append(actor)
                except ray.exceptions.RayError as e:  # run_item returns item failures, so this is the worker's
                    died = isinstance(e, ray.exceptions.RayActorError)  # e.g. killed for memory: replace it
                    result = {"status": "failed", "seconds": 0.0, "finished": now(),
                              "error": f"{'worker died' if died else 'worker error'}: "
                                       f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}"}
                    idle.append(worker_cls.remote() if died else actor)
                _finish(manifest, job, result)
                bar.update(1)
    except KeyboardInterrupt:
        for ref, job in pending.items():
            ray.cancel(ref)
            manifest.update(job.name, status="interrupted")
        raise DreamgenError("interrupted; the running items keep their last checkpoints; "
                            "run the same command again to resume") from None
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
