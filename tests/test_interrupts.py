"""Interrupted runs resume exactly, whatever stopped them (#14): SIGINT and SIGTERM stop at a step boundary with a
checkpoint and the command that resumes (exit 130/143), SIGKILL loses only the steps since the last checkpoint; in
every case the resumed run equals the uninterrupted one bit for bit on CPU — parameters, optimiser, loss state,
metrics lines and the GLB."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamgen.interrupts import InterruptPolicy
from dreamgen.testing import SMALL_RUN

STEPS = 24
ARGS = ["run", "a red cube", "--seed", "5", "--steps", str(STEPS), *SMALL_RUN, "renderer.num_samples=8",
        "trainer.checkpoint_every=4", "trainer.preview_every=0", "export.texture=false", "export.resolution=32",
        "export.turntable_frames=0"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _dreamgen(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dreamgen", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, **kw)


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in lines]


def _assert_same_tensors(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    res = _dreamgen(*ARGS, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    return _run_dir(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_resumes_bit_for_bit(uninterrupted, tmp_path, sig):
    at = random.Random(sig).randint(6, STEPS - 6)  # a random step, reproducible per signal
    proc = subprocess.Popen([sys.executable, "-m", "dreamgen", *ARGS, "--out", str(tmp_path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        metrics = None
        while proc.poll() is None and time.monotonic() < deadline:
            runs = [p for p in tmp_path.iterdir() if p.is_dir()]
            metrics = runs[0] / "metrics.jsonl" if runs else None
            if metrics is not None and metrics.exists() and len(metrics.read_text().splitlines()) >= at:
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    run = _run_dir(tmp_path)
    stopped = _state(run)["step"]
    if sig == signal.SIGKILL:  # the steps since the last periodic checkpoint are lost, and redone on resume
        assert proc.returncode == -signal.SIGKILL and 0 < stopped <= at and stopped % 4 == 0
    else:
        assert at <= stopped < STEPS and proc.returncode == 128 + sig, (at, stopped, err[-1500:])
        last = err.strip().splitlines()[-1]
        name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
        assert last == (f"error: interrupted by {name} at step {stopped}/{STEPS}; checkpoint saved; continue with: "
                        f"dreamgen run --resume {run}")
        assert len(_metrics(run)) == stopped  # the checkpoint is exactly the step the log ends at
    res = _dreamgen("run", "--resume", run)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {run} at step {stopped}/{STEPS}" in res.stderr
    a, b = _state(uninterrupted), _state(run)
    for key in ("step", "stage", "scene", "optimizer", "loss", "random", "camera"):
        _assert_same_tensors(a[key], b[key], key)
    assert _metrics(run) == _metrics(uninterrupted)
    assert (run / "mesh.glb").read_bytes() == (uninterrupted / "mesh.glb").read_bytes()


def test_a_second_ctrl_c_stops_at_once_without_writing(tmp_path):
    # Slow steps (64 px, 96 samples on every ray, no empty-space skipping to cut them: ~1 s each) so that both
    # signals land in the same step; two signals sent back to back would be merged into one by the kernel.
    proc = subprocess.Popen([sys.executable, "-m", "dreamgen", *ARGS[:5], "400", *ARGS[6:], "--out", str(tmp_path),
                             "trainer.checkpoint_every=1000", "camera.resolution=[64]", "renderer.num_samples=96",
                             "renderer.occupancy_grid=false"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            runs = [p for p in tmp_path.iterdir() if p.is_dir()]
            if runs and (runs[0] / "metrics.jsonl").exists() and (runs[0] / "metrics.jsonl").stat().st_size:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "again: stopped at once, nothing written" in err
    assert not (_run_dir(tmp_path) / "checkpoints" / "last.pt").exists()


def test_signals_outside_a_loop_interrupt_at_once_and_are_deferred_inside():
    before = signal.getsignal(signal.SIGTERM)  # whatever the process had (e.g. Ray's, after a Ray test)
    with InterruptPolicy() as policy:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        policy.signum = None
        with policy.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised: the loop finishes its step
            assert policy.pending and policy.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
