"""The command line as a user runs it: exit codes, one-line errors, the run folder, resume and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from dreamgen.testing import SMALL_RUN
from dreamgen.cli import main

TINY = [*SMALL_RUN, "renderer.num_samples=12", "trainer.preview_every=5", "export.resolution=32",
        "trainer.checkpoint_every=5", "export.texture_size=64", "export.turntable_frames=4"]


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["dreamgen", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("args,expected", [
    (["run", "a red cube", "--loss", "nope"], "unknown loss 'nope'; valid names:"),
    (["run", "a red cube", "trainer.stepz=3"], "unknown key 'trainer.stepz'"),
    (["run", "a red cube", "--guidance", "/no/such/folder"], "could not load Stable Diffusion"),
    (["run", "   "], "prompt is empty"),
    (["run", "a red cube", "trainer.steps"], "key=value"),
    (["export", "/no/such/run"], "not a run folder"),
])
def test_bad_input_one_line_error(monkeypatch, capsys, tmp_path, args, expected):
    monkeypatch.chdir(tmp_path)
    code, out = _cli(monkeypatch, capsys, *args, *(["--out", str(tmp_path)] if args[0] == "run" else []))
    assert code not in (0, None)
    err = out.err.strip().splitlines()
    assert err and expected in err[-1] and "Traceback" not in out.err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no half-made run folder


def test_losses_lists_every_loss(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dreamgen", "losses"])
    main()
    out = capsys.readouterr().out
    for name in ("sds", "vsd", "esd", "csd", "nfsd", "ism"):
        assert name in out


def test_config_show_resolves_overrides(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dreamgen", "config", "show", "--loss", "esd", "trainer.steps=77"])
    main()
    out = capsys.readouterr().out
    assert "steps: 77" in out and "lambda_entropy" in out


def test_run_resume_export_end_to_end(tiny_sd_path, tmp_path):
    """A real subprocess run: run folder layout, GLB that trimesh loads, resume, OBJ export."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dreamgen", "run", "a hamburger", "--guidance", str(tiny_sd_path),
           "--out", str(tmp_path), "--steps", "10", *TINY]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run.name.startswith("a-hamburger-")
    for rel in ("config.yaml", "checkpoints/last.pt", "metrics.jsonl", "previews/step_000005.png",
                "previews/final.png", "mesh.glb"):
        assert (run / rel).exists(), rel
    mesh = trimesh.load(run / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0

    res = subprocess.run([sys.executable, "-m", "dreamgen", "run", "--resume", str(run), "trainer.steps=12"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stderr and "step 10/12" in res.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 12

    res = subprocess.run([sys.executable, "-m", "dreamgen", "export", str(run), "--format", "obj"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(trimesh.load(run / "mesh.obj", force="mesh").faces) > 0

    # DDS editing toward a new prompt, and the DMTet stage from the finished coarse run: new folders each.
    edit_out, fine_out = tmp_path / "edit", tmp_path / "fine"
    res = subprocess.run([sys.executable, "-m", "dreamgen", "edit", str(run), "a cheeseburger", "--steps", "2",
                          "--out", str(edit_out)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (edited,) = edit_out.iterdir()
    assert edited.name.startswith("a-cheeseburger-") and (edited / "mesh.glb").exists()
    res = subprocess.run([sys.executable, "-m", "dreamgen", "run", "--from", str(run), f"out_dir={fine_out}",
                          "fine.steps=2", "fine.resolution=16", "fine.geometry.grid_resolution=8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (fine,) = fine_out.iterdir()
    steps = [json.loads(x) for x in (fine / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in steps] == ["dmtet", "dmtet"] and steps[-1]["step"] == 14
    assert len(trimesh.load(fine / "mesh.glb", force="mesh").faces) > 0
