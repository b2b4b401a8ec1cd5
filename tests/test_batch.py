"""``dreamgen batch``: prompt files, failure isolation, skip/retry on re-run, kill-and-resume, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from dreamgen.testing import SMALL_RUN
from dreamgen.batch import runner
from dreamgen.batch.inputs import BatchInputError, read_batch_file
from dreamgen.batch.manifest import Manifest
from dreamgen.batch.runner import make_job
from dreamgen.config import load_config
from dreamgen.errors import DreamgenError

# Tiny items: a few seconds each on a CPU (no texture bake, no turntable, small previews).
TINY = [*SMALL_RUN, "renderer.num_samples=12", "export.resolution=32", "export.texture=false",
        "export.turntable_frames=0", "trainer.preview_every=0", "trainer.preview_resolution=16",
        "trainer.preview_views=4", "trainer.progress=false"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    code, out = run_cli(monkeypatch, capsys, "batch", *args)
    return code, out.out, out.err


def _items(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["items"]}


# ---- prompt files ---------------------------------------------------------------------------------------------------
def test_txt_names_comments_and_repeated_prompts(tmp_path):
    f = _write(tmp_path / "p.txt",
               "# a comment\na red cube\n\n  a blue sphere  \na red cube\n   # indented\na red cube\n")
    items = read_batch_file(f)
    assert [(i.name, i.prompt, i.line) for i in items] == [
        ("a-red-cube", "a red cube", 2), ("a-blue-sphere", "a blue sphere", 4), ("a-red-cube-2", "a red cube", 5),
        ("a-red-cube-3", "a red cube", 7)]


def test_default_names_avoid_explicit_ones(tmp_path):
    f = _write(tmp_path / "p.jsonl", '"a red cube"\n{"prompt": "a blue cube", "name": "a-red-cube"}\n')
    assert [i.name for i in read_batch_file(f)] == ["a-red-cube-2", "a-red-cube"]


def test_jsonl_every_problem_reported_with_its_line(tmp_path):
    f = _write(tmp_path / "p.jsonl", "\n".join([
        '{"prompt": "a red cube", "name": "cube"}',
        '{"prompt": "a blue cube", "loss": "sds"',          # 2: malformed JSON
        '{"prompt": "   "}',                                # 3: empty prompt
        '{"prompt": "a torus", "stesp": 3}',                # 4: unknown field
        '{"prompt": "a cone", "name": "cube"}',             # 5: duplicate explicit name
        '# {"prompt": "commented out", "name": "cube"}',
        '{"prompt": "a cone", "steps": 0, "name": "a b"}',  # 7: two problems
        '{"prompt": "ok", "overrides": ["trainer.steps"]}',  # 8: override without '='
    ]) + "\n")
    with pytest.raises(BatchInputError) as e:
        read_batch_file(f)
    lines = [p.split(":")[1] for p in e.value.problems]
    assert lines == ["2", "3", "4", "5", "7", "7", "8"], e.value.problems
    assert "duplicate name 'cube' (first used on line 1)" in e.value.problems[3]
    assert "unknown field 'stesp'" in e.value.problems[2]
    assert "7 problems" in str(e.value) and "\n" not in str(e.value)


def test_yaml_items_overrides_and_line_numbers(tmp_path):
    f = _write(tmp_path / "p.yaml", """
- a red cube
- prompt: a blue sphere
  name: sphere
  loss: vsd
  seed: 3
  steps: 7
  overrides: {camera.resolution: [24], loss.guidance_scale: 7.5}
- prompt: a green cone
  overrides: ["trainer.lr=0.02"]
""")
    a, b, c = read_batch_file(f)
    assert (a.name, a.line, b.line, c.line) == ("a-red-cube", 2, 3, 9)
    assert b.overrides == ("camera.resolution=[24]", "loss.guidance_scale=7.5")
    # The item's overrides reach the config, and its own fields win over the batch's trailing overrides.
    job = make_job(b, tmp_path, None, ["trainer.steps=5", "seed=1", "trainer.lr=0.5"])
    cfg = load_config(job.config, job.overrides, **job.flags)
    assert (cfg.prompt, cfg.loss.name, cfg.seed, cfg.trainer.steps) == ("a blue sphere", "vsd", 3, 7)
    assert cfg.camera.resolution == [24] and cfg.loss.guidance_scale == 7.5 and cfg.trainer.lr == 0.5
    job = make_job(c, tmp_path, None, ["trainer.lr=0.5"])
    assert load_config(job.config, job.overrides, **job.flags).trainer.lr == 0.02

    bad = _write(tmp_path / "bad.yaml", "- prompt: ok\n- prompt: [1, 2]\n- name: nameless\n- 3\n")
    with pytest.raises(BatchInputError) as e:
        read_batch_file(bad)
    assert [p.split(":")[1] for p in e.value.problems] == ["2", "3", "4"]
    with pytest.raises(BatchInputError, match="1 problem"):
        read_batch_file(_write(tmp_path / "broken.yaml", "- prompt: ok\n- prompt: [unclosed\n"))


def test_cli_lists_problems_and_runs_nothing(monkeypatch, capsys, tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": ""}\nnot json\n')
    code, _, err = _cli(monkeypatch, capsys, f, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("p.jsonl:1: empty prompt") and lines[1].startswith("p.jsonl:2: invalid")
    assert "2 problems" in lines[-1] and "nothing was run" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_check_validates_item_configs_without_running(monkeypatch, capsys, tmp_path):
    long = "a red cube " * 200
    f = _write(tmp_path / "p.jsonl", '"a red cube"\n{"prompt": "a blue cube", "loss": "nope"}\n'
                                     '{"prompt": "a torus", "overrides": {"trainer.stepz": 3}}\n'
                                     f'"a corgi"\n{{"prompt": "{long}", "name": "long"}}\n')
    code, _, err = _cli(monkeypatch, capsys, f, "--out", tmp_path / "out", "--check")
    lines = err.strip().splitlines()
    assert code == 2
    assert lines[0].startswith("p.jsonl:2: item 'a-blue-cube': unknown loss 'nope'")
    assert lines[1].startswith("p.jsonl:3: item 'a-torus': unknown key 'trainer.stepz'")
    # What the run would reject, --check reports: words the embedded prior does not know, a runaway prompt.
    assert lines[2].startswith("p.jsonl:4: item 'a-corgi': unknown word 'corgi' for the embedded prior")
    assert lines[3].startswith(f"p.jsonl:5: item 'long': the prompt is {len(long.strip())} characters long")
    _write(f, '"a red cube"\n"a blue cube"\n')
    code, out, _ = _cli(monkeypatch, capsys, f, "--out", tmp_path / "out", "--check")
    assert code == 0 and out.splitlines()[:2] == ["a-red-cube\tnew\ta red cube", "a-blue-cube\tnew\ta blue cube"]
    assert not (tmp_path / "out").exists()


def test_manifest_refuses_a_name_reused_for_another_prompt(tmp_path):
    items = read_batch_file(_write(tmp_path / "p.jsonl", '{"prompt": "a red cube", "name": "x"}\n'))
    Manifest.open(tmp_path / "out", items, "p.jsonl", [])
    moved = read_batch_file(_write(tmp_path / "p.jsonl", '{"prompt": "a blue cube", "name": "x"}\n'))
    with pytest.raises(DreamgenError, match="already has item 'x' for prompt 'a red cube'"):
        Manifest.open(tmp_path / "out", moved, "p.jsonl", [])


def test_guidance_cache_is_an_lru_per_process(monkeypatch):
    from dreamgen.guidance import auto
    from dreamgen.guidance.shapes import ShapesGuidanceConfig

    builds = []
    monkeypatch.setattr(auto, "build_guidance", lambda cfg, dev: builds.append(cfg.weights) or object())
    runner._guidance_cache.clear()
    a, b, cpu = ShapesGuidanceConfig(weights="a"), ShapesGuidanceConfig(weights="b"), torch.device("cpu")
    g1 = runner.cached_guidance(a, cpu, size=1)
    assert runner.cached_guidance(ShapesGuidanceConfig(weights="a"), cpu, size=1) is g1  # an equal config: a hit
    runner.cached_guidance(b, cpu, size=1)  # evicts a
    assert runner.cached_guidance(a, cpu, size=2) is not g1
    runner.cached_guidance(b, cpu, size=2)  # size 2 keeps both
    assert builds == ["a", "b", "a"]
    runner._guidance_cache.clear()


@pytest.mark.parametrize("args,expected", [
    (["--executor", "dask"], "unknown executor 'dask'"),
    (["--executor", "ray", "--devices", "0"], "--devices is for the local and processes executors"),
    (["--workers", "2"], "--workers takes a positive number of processes for --executor processes"),
    (["--executor", "processes", "--workers", "0"], "--workers takes a positive number"),
    (["--devices", "0,x"], "--devices takes CUDA device numbers"),
    (["--devices", "99"], "there is no CUDA device 99"),
])
def test_bad_options_one_line_error(monkeypatch, capsys, tmp_path, args, expected):
    f = _write(tmp_path / "p.txt", "a red cube\n")
    code, _, err = _cli(monkeypatch, capsys, f, "--out", tmp_path / "out", *args)
    assert code == 2 and expected in err.strip().splitlines()[-1] and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---- running --------------------------------------------------------------------------------------------------------
def test_poisoned_item_fails_alone_rerun_skips_retry_reruns(monkeypatch, capsys, tmp_path):
    """4 items, one with an unknown loss: 3 done + 1 failed, exit 2; a re-run changes nothing; after fixing the
    file, --retry-failed runs only that item. The guidance is built once for the whole batch."""
    from dreamgen.guidance import auto

    builds = []
    real_build = auto.build_guidance
    monkeypatch.setattr(auto, "build_guidance", lambda cfg, dev: builds.append(cfg.name) or real_build(cfg, dev))
    runner._guidance_cache.clear()
    f = _write(tmp_path / "p.yaml", "- a red cube\n- a blue sphere\n- prompt: a green cube\n  loss: nope\n"
                                    "- prompt: a red cube\n  seed: 1\n")
    out = tmp_path / "out"
    args = [f, "--out", out, "trainer.steps=2", *TINY]

    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and err.strip().splitlines()[-1] == f"error: 3 done, 1 failed: see {out / 'manifest.json'}"
    items = _items(out)
    assert [r["status"] for r in items.values()] == ["done", "done", "failed", "done"]
    assert items["a-green-cube"]["error"].startswith("unknown loss 'nope'")
    for name in ("a-red-cube", "a-blue-sphere", "a-red-cube-2"):
        assert (out / items[name]["mesh"]).is_file() and items[name]["step"] == 2
        assert items[name]["final_loss"] is not None and items[name]["attempts"] == 1
    assert builds == ["shapes"]  # one guidance for all items (auto resolved when each config was composed)
    summary = (out / "summary.md").read_text()
    assert "3 done, 1 failed" in summary and summary.count("\n| ") == 5  # header + 4 items
    from PIL import Image
    assert Image.open(out / "contact_sheet.png").height == 3 * 96
    gallery = (out / "index.html").read_text()  # a viewer per mesh; the failed item's card says why
    assert gallery.count("<model-viewer ") == 3 and "unknown loss &#x27;nope&#x27;" in gallery

    manifest_before = (out / "manifest.json").read_bytes()
    mesh_mtime = (out / "a-red-cube" / "mesh.glb").stat().st_mtime_ns
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "3 done, 1 failed" in err
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert (out / "a-red-cube" / "mesh.glb").stat().st_mtime_ns == mesh_mtime

    _write(f, f.read_text().replace("loss: nope", "loss: sds"))
    code, out_text, err = _cli(monkeypatch, capsys, *args, "--retry-failed")
    assert code == 0, err
    assert out_text.startswith("4 done")
    after = _items(out)
    assert after["a-green-cube"]["status"] == "done" and after["a-green-cube"]["attempts"] == 2
    assert after["a-green-cube"]["spec"]["loss"] == "sds" and after["a-green-cube"]["error"] is None
    assert all(after[n] == items[n] for n in ("a-red-cube", "a-blue-sphere", "a-red-cube-2"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_batch_resumes_from_checkpoint(tmp_path, sig):
    """Kill the batch process once the item has a checkpoint: the manifest stays valid JSON and a re-run continues
    from the checkpoint (SIGTERM: checkpoint written and item marked interrupted on the way out)."""
    f = _write(tmp_path / "p.txt", "a red cube\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dreamgen", "batch", str(f), "--out", str(out), "trainer.steps=12",
           "trainer.checkpoint_every=2", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpt = out / "a-red-cube" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ckpt.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    rec = _items(out)["a-red-cube"]  # valid JSON whatever the moment of the kill
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL and rec["status"] == "running"
    else:
        assert proc.returncode == 143, err
        last = err.strip().splitlines()[-1]
        assert "interrupted by SIGTERM during 'a-red-cube' at step" in last and "continue with: dreamgen batch" in last
        assert rec["status"] == "interrupted"
        assert torch.load(ckpt, weights_only=True)["step"] == rec["step"] > 0
    stopped_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < stopped_at < 12

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = _items(out)["a-red-cube"]
    assert (rec["status"], rec["step"], rec["resumed_from"], rec["attempts"]) == ("done", 12, stopped_at, 2)
    steps = [json.loads(ln)["step"] for ln in (out / "a-red-cube" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # nothing lost or repeated past the checkpoint
    assert (out / rec["mesh"]).is_file()
