"""The processes executor (``--executor processes --workers N``): the same manifest outcome as the local executor,
and a signal to the driver stops its workers, leaving items that a re-run resumes from their checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import run_cli

from dreamgen.batch import runner

from test_batch import TINY, _items, _write

SAME = ("status", "step", "steps", "run_dir", "mesh", "attempts", "spec", "error")


def test_processes_executor_matches_local(monkeypatch, capsys, tmp_path):
    f = _write(tmp_path / "p.yaml", "- a red cube\n- a blue sphere\n- prompt: a green cube\n  loss: nope\n")
    runner._guidance_cache.clear()
    for folder, extra in (("processes", ["--executor", "processes", "--workers", "2"]), ("local", [])):
        code, _ = run_cli(monkeypatch, capsys, "batch", f, "--out", tmp_path / folder, "trainer.steps=3", *TINY,
                          *extra)
        assert code == 2
    procs, local = _items(tmp_path / "processes"), _items(tmp_path / "local")
    assert list(procs) == list(local) == ["a-red-cube", "a-blue-sphere", "a-green-cube"]
    for name, r in procs.items():
        assert {k: r[k] for k in SAME} == {k: local[name][k] for k in SAME}, name
    assert [r["status"] for r in procs.values()] == ["done", "done", "failed"]
    assert procs["a-green-cube"]["error"].startswith("unknown loss 'nope'")
    for name in ("a-red-cube", "a-blue-sphere"):
        assert (tmp_path / "processes" / procs[name]["mesh"]).is_file()
        # one thread per worker here, two in this process: the same sums in another order
        assert procs[name]["final_loss"] == pytest.approx(local[name]["final_loss"], rel=1e-3)


def test_sigterm_stops_the_workers_and_a_rerun_resumes(tmp_path):
    f = _write(tmp_path / "p.txt", "a red cube\na blue sphere\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dreamgen", "batch", str(f), "--out", str(out), "--executor", "processes",
           "--workers", "2", "trainer.steps=400", "trainer.checkpoint_every=2", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpts = [out / name / "checkpoints" / "last.pt" for name in ("a-red-cube", "a-blue-sphere")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not all(c.exists() for c in ckpts) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(c.exists() for c in ckpts), proc.stderr.read() if proc.poll() is not None else "no checkpoints"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "interrupted by SIGTERM; the running items keep their last checkpoints; continue with: dreamgen batch" in last
    items = _items(out)
    assert [r["status"] for r in items.values()] == ["interrupted", "interrupted"]
    mtimes = [c.stat().st_mtime_ns for c in ckpts]
    time.sleep(1.0)
    assert [c.stat().st_mtime_ns for c in ckpts] == mtimes  # the workers are gone, not training on

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    for name, rec in _items(out).items():
        assert (rec["status"], rec["step"], rec["attempts"]) == ("done", 400, 2), name
        assert rec["resumed_from"] > 0
        steps = [json.loads(ln)["step"] for ln in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 401))  # nothing lost or repeated past the checkpoint


@pytest.mark.parametrize("files, expected", [
    ({}, "affinity"),                                                   # no cgroup files: the affinity mask
    ({"cpu.max": "max 100000\n"}, "affinity"),                          # v2, no quota
    ({"cpu.max": "100000 100000\n"}, 1),                                # v2, one core
    ({"cpu.max": "150000 100000\n"}, 2),                                # v2, 1.5 cores: 2 busy processes fit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "affinity"),  # v1, no quota
    ({"cpu.max": "garbage\n"}, "affinity"),
])
def test_usable_cpus_reads_the_container_quota(tmp_path, monkeypatch, files, expected):
    from dreamgen.device import usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))  # a 64-core host
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert usable_cpus(tmp_path) == (64 if expected == "affinity" else expected)
