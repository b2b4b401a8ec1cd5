"""Executors: where a batch's items run. The driver (this process) alone writes the manifest, after every change.

- ``local``: items one after another in this process; with ``--devices 0,1`` item k runs on ``cuda:{devices[k % n]}``.
- ``processes``: ``--workers N`` processes of this machine, each running items one at a time with its own guidance
  cache and a share of the CPU threads; on one GPU they share it (the embedded prior is small, so a single run leaves
  most of a large GPU idle), with ``--devices`` they go round-robin over several. Needs no extra package.
- ``ray``: one Ray actor per device slot (``num_gpus`` each, 0 on CPUs); each item is a task on an idle actor. Actors,
  not plain tasks: a process keeps its GPU and its guidance cache for the whole batch, so the weights load once per
  worker (Ray restarts the process of a GPU *task* after every call, which would reload them for every item).
  On a multi-node cluster the batch folder must be on storage every node sees: workers write the run folders.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from dreamgen.batch.manifest import Manifest, now
from dreamgen.batch.runner import ItemInterrupted, ItemJob, run_item
from dreamgen.device import usable_cpus
from dreamgen.errors import DreamgenError, Interrupted
from dreamgen.interrupts import InterruptPolicy, signal_name
from dreamgen.progress import Progress

log = logging.getLogger("dreamgen")


def _interrupted(job: ItemJob, step: int, signum: int) -> Interrupted:
    return Interrupted(f"interrupted by {signal_name(signum)} during '{job.name}' at step {step}; checkpoint saved; "
                       f"continue with: {job.resume_command}", signum)


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


def run_local(manifest: Manifest, jobs: list[ItemJob], devices: list[str] | None = None,
              interrupts: InterruptPolicy | None = None) -> None:
    """Run ``jobs`` in order in this process. SIGINT/SIGTERM stop the current item at a step boundary with a
    checkpoint, mark it interrupted and raise :class:`Interrupted`."""
    bar = Progress(len(jobs), desc="batch", unit="item", log_every=1)
    try:
        for job in jobs:
            _start(manifest, job)
            try:
                result = run_item(job, interrupts, cache_size=len(devices) if devices else 1)
            except ItemInterrupted as e:
                rec = manifest.records[job.name]
                manifest.update(job.name, status="interrupted", step=e.step, seconds=round(rec.seconds + e.seconds, 3))
                signum = e.cause.signum if e.cause is not None else signal.SIGINT
                raise _interrupted(job, e.step, signum) from None
            _finish(manifest, job, result)
            if result["status"] == "failed" and torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory item must not starve the next one
            bar.update(1)
            if interrupts is not None and interrupts.pending:  # a signal after the item's last step
                raise Interrupted(f"interrupted by {signal_name(interrupts.signum)} between items; continue with: "
                                  f"{job.resume_command}", interrupts.signum)
    finally:
        bar.close()


def _workers_interrupted(manifest: Manifest, jobs: list[ItemJob], running: Iterable[ItemJob],
                         interrupts: InterruptPolicy | None) -> Interrupted:
    """A signal stopped a pool of workers: their items are marked interrupted (each keeps its last checkpoint)."""
    for job in running:
        manifest.update(job.name, status="interrupted")
    signum = interrupts.signum if interrupts is not None and interrupts.signum else signal.SIGINT
    return Interrupted(f"interrupted by {signal_name(signum)}; the running items keep their last checkpoints; "
                       f"continue with: {jobs[0].resume_command}", signum)


def _init_process_worker(threads: int) -> None:
    # The driver alone handles Ctrl-C (the terminal sends it to the whole process group) and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def _run_in_process(job: ItemJob) -> dict[str, Any]:
    return run_item(job, interrupts=None, cache_size=1)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: a forked child cannot initialise CUDA, and it would inherit the driver's signal handlers.
    threads = max(1, usable_cpus() // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_process_worker, initargs=(threads,))


def run_processes(manifest: Manifest, jobs: list[ItemJob], workers: int,
                  interrupts: InterruptPolicy | None = None) -> None:
    """Run ``jobs`` on ``workers`` local processes, a new item as soon as one finishes. A signal stops the workers
    (the running items keep their last periodic checkpoint, as with Ray), marks those items interrupted and raises
    :class:`Interrupted`. A worker that dies (killed for memory, say) breaks the pool: the items it was running with
    are marked failed (``--retry-failed`` runs them again) and a new pool takes the rest."""
    n_workers = max(1, min(workers, len(jobs)))
    log.info("processes: %d worker(s) for %d item(s)", n_workers, len(jobs))
    for job in jobs:  # no per-item step bars: many workers' bars would interleave
        job.progress = False
    pool = _new_pool(n_workers)
    queue, pending = deque(jobs), {}
    bar = Progress(len(jobs), desc="batch", unit="item", log_every=1)
    try:
        while queue or pending:
            while queue and len(pending) < n_workers:
                job = queue.popleft()
                _start(manifest, job)
                pending[pool.submit(_run_in_process, job)] = job
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                job = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    result = {"status": "failed", "seconds": 0.0, "finished": now(),
                              "error": "worker died (killed for memory?) while this item ran"}
                _finish(manifest, job, result)
                bar.update(1)
            if broken:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _new_pool(n_workers)
    except KeyboardInterrupt:
        _stop_workers(pool)
        raise _workers_interrupted(manifest, jobs, pending.values(), interrupts) from None
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    procs = list((pool._processes or {}).values())  # the executor offers no public way to stop running calls
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=10)


class ItemWorker:
    """A Ray actor: one process on one device slot, running items one at a time with its own guidance cache."""

    def run(self, job: ItemJob) -> dict[str, Any]:
        return run_item(job, interrupts=None, cache_size=1)


def run_ray(manifest: Manifest, jobs: list[ItemJob], address: str | None, num_gpus: float | None,
            interrupts: InterruptPolicy | None = None) -> None:
    """Run ``jobs`` on Ray: joins ``address`` (e.g. ``auto``) or starts a local instance (unless one is already
    initialised in this process, which is then used and left running). A signal cancels the running items (they
    keep their last periodic checkpoint) and raises :class:`Interrupted`."""
    try:
        import ray
    except ImportError:
        raise DreamgenError("the ray executor needs Ray: pip install 'dreamgen[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    pending: dict[Any, ItemJob] = {}
    bar = Progress(len(jobs), desc="batch", unit="item", log_every=1)
    try:
        # The driver waits in ray.wait: a signal raises KeyboardInterrupt there (nothing to defer).
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
        for ref in pending:
            ray.cancel(ref)
        raise _workers_interrupted(manifest, jobs, pending.values(), interrupts) from None
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
