"""The command line as a user runs it: exit codes, one-line errors, the run folder, resume and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli as _cli
import trimesh

from dreamgen.cli import main
from dreamgen.testing import SMALL_RUN

TINY = [*SMALL_RUN, "renderer.num_samples=12", "trainer.preview_every=5", "export.resolution=32",
        "trainer.checkpoint_every=5", "export.texture_size=64", "export.turntable_frames=4"]


@pytest.mark.parametrize("args,expected,code", [
    (["run", "a red cube", "--loss", "nope"], "unknown loss 'nope'; valid names:", 2),
    (["run", "a red cube", "trainer.stepz=3"], "unknown key 'trainer.stepz'", 2),
    (["run", "a red cube", "--guidance", "/no/such/folder"], "could not load Stable Diffusion", 2),
    (["run", "   "], "prompt is empty", 2),
    (["run", "a corgi"], "unknown word 'corgi' for the embedded prior", 2),
    (["run", "a red cube", "trainer.steps"], "key=value", 2),
    (["run", "a red cube", "trainer.checkpoint_every=0"], "trainer.checkpoint_every=0: must be ≥ 1", 2),
    (["run", "a red cube", "camera.resolution=[0]"], "camera.resolution=[0]: must be > 0", 2),
    (["run", "a red cube", "device=tpu"], "device='tpu': must be auto, cpu, cuda or cuda:N", 2),
    (["run", "a red cube", "geometry.name=dmtet"], "the coarse stage renders a density field", 2),
    (["run", "a red cube", "prompt=${oc.env:DREAMGEN_SURELY_UNSET}"], "cannot resolve prompt:", 2),
    (["run", "--resume", "/no/such/run"], "not a run folder", 2),
    (["export", "/no/such/run"], "not a run folder", 2),
    (["eval", "/no/such/run"], "not a run folder", 2),
    (["edit", "/no/such/run", "a blue cube"], "not a run folder", 2),
])
def test_bad_input_one_line_error(monkeypatch, capsys, tmp_path, args, expected, code):
    monkeypatch.chdir(tmp_path)
    got, out = _cli(monkeypatch, capsys, *args, *(["--out", str(tmp_path)] if args[:2] != ["run", "--resume"]
                                                   and args[0] == "run" else []))
    assert got == code
    err = out.err.strip().splitlines()
    assert err and expected in err[-1] and "Traceback" not in out.err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # no half-made run folder


@pytest.mark.parametrize("args", [["frobnicate"], [], ["run", "--steps", "abc"], ["run", "--steps", "0", "x"],
                                  ["eval", "x", "--views", "0"], ["eval", "x", "--resolution", "0"],
                                  ["lab2d", "--loss", "sds", "--n-particles", "0"]])
def test_usage_errors_exit_2_with_the_usage_line(monkeypatch, capsys, args):
    code, out = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "Usage: dreamgen" in out.err + out.out and "Traceback" not in out.err


@pytest.mark.parametrize("where", ["file", "proc"])
def test_out_that_cannot_hold_a_run_folder(monkeypatch, capsys, tmp_path, where):
    out = tmp_path / "a-file" if where == "file" else Path("/proc/dreamgen-test")
    if where == "file":
        out.write_text("not a folder")
    code, captured = _cli(monkeypatch, capsys, "run", "a red cube", "--out", str(out), "--steps", "2")
    err = captured.err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: cannot create the run folder") and "--out must name a writable" in err


def test_run_names_the_world_objects_settings_it_applies(monkeypatch, capsys, caplog, tmp_path):
    out = tmp_path / "a-file"  # stops the run at its folder, after the config is composed
    out.write_text("not a folder")
    with caplog.at_level("INFO", logger="dreamgen"):
        code, _ = _cli(monkeypatch, capsys, "run", "an orange cone", "--out", str(out), "--steps", "2")
    assert code == 1 and "settings for this object: dreamgen/configs/objects/cone.yaml: loss.name=ism" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="dreamgen"):
        code, _ = _cli(monkeypatch, capsys, "run", "an orange cone", "--loss", "sds", "--out", str(out))
    assert code == 1 and "settings for this object" not in caplog.text  # the named loss wins: nothing applied


def test_a_full_disk_leaves_nothing_half_written(monkeypatch, tmp_path):
    import errno
    import os

    from dreamgen.errors import RunFailure
    from dreamgen.runs import atomic_write_text

    target = tmp_path / "config.yaml"
    target.write_text("the previous, complete file")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunFailure, match=f"cannot write {target}: No space left on device; free some space"):
        atomic_write_text(target, "new text")
    assert target.read_text() == "the previous, complete file" and [p.name for p in tmp_path.iterdir()] == [
        "config.yaml"]


def test_resume_honours_or_refuses_each_flag(monkeypatch, capsys, caplog, tmp_path):
    from dreamgen.config import load_config
    from dreamgen.session import Session

    cfg = load_config(None, [*SMALL_RUN, "renderer.num_samples=8", "trainer.progress=false", "trainer.preview_every=0",
                             "export.texture=false", "export.turntable_frames=0", "export.resolution=32"],
                      prompt="a red cube", **{"trainer.steps": 2, "trainer.checkpoint_every": 1})
    session = Session.new(cfg, run_dir=tmp_path / "run")
    session.fit()
    run = session.run_dir
    for flag, value in (("--loss", "vsd"), ("--seed", "3"), ("--out", str(tmp_path)), ("--config", "esd"),
                        ("--guidance", "shapes")):
        code, out = _cli(monkeypatch, capsys, "run", "--resume", str(run), flag, value)
        assert code == 2 and f"error: {flag} cannot be used with --resume" in out.err.strip().splitlines()[-1]
    with caplog.at_level("INFO", logger="dreamgen"):
        code, out = _cli(monkeypatch, capsys, "run", "--resume", str(run), "--steps", "3")
    assert code == 0 and f"resuming {run} at step 2/3" in caplog.text
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_nan_at_the_first_step_exits_1_and_says_no_checkpoint_exists(monkeypatch, capsys, tmp_path):
    from dreamgen.guidance.shapes import ShapesGuidance

    monkeypatch.setattr(ShapesGuidance, "encode_images", lambda self, rgb: rgb.permute(0, 3, 1, 2) * float("nan"))
    code, out = _cli(monkeypatch, capsys, "run", "a red cube", "--out", str(tmp_path), "--steps", "3", *SMALL_RUN)
    err = out.err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in out.err
    assert err.startswith("error: the loss became nan at step 0") and err.endswith("no checkpoint was written yet)")


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
    res = subprocess.run([sys.executable, "-m", "dreamgen", "run", "--from", str(run), "--out", str(fine_out),
                          "fine.steps=2", "fine.resolution=16", "fine.geometry.grid_resolution=8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (fine,) = fine_out.iterdir()
    steps = [json.loads(x) for x in (fine / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in steps] == ["dmtet", "dmtet"] and steps[-1]["step"] == 14
    assert len(trimesh.load(fine / "mesh.glb", force="mesh").faces) > 0
