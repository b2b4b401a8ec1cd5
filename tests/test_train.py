"""Trainer: a few real optimisation steps on the tiny SD pipeline, exact resume, determinism, NaN handling."""

from __future__ import annotations

import json

import pytest
import torch

from dreamgen.config import load_config
from dreamgen.errors import NonFiniteError
from dreamgen.train import Trainer, load_scene

TINY = ["camera.resolution=[16]", "renderer.num_samples=12", "trainer.preview_every=0", "trainer.progress=false",
        "export.resolution=32"]


def _cfg(tiny_sd_path, steps, extra=()):
    return load_config(None, [*TINY, *extra], prompt="a hamburger", seed=3,
                       **{"guidance.name": "stable-diffusion", "guidance.pretrained": str(tiny_sd_path),
                          "trainer.steps": steps, "trainer.checkpoint_every": 3})


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.scene.parameters()])


def test_steps_change_parameters_and_log_phases(tiny_sd_path, tmp_path):
    tr = Trainer(_cfg(tiny_sd_path, 3), run_dir=tmp_path)
    before = _params(tr).clone()
    tr.fit()
    assert not torch.equal(before, _params(tr))
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(r["time_render"] > 0 and r["time_backward"] > 0 for r in recs)
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "previews" / "final.png").exists()


def test_seed_makes_cpu_run_deterministic(tiny_sd_path, tmp_path):
    a = Trainer(_cfg(tiny_sd_path, 2), run_dir=tmp_path / "a")
    a.fit()
    b = Trainer(_cfg(tiny_sd_path, 2), run_dir=tmp_path / "b")
    b.fit()
    assert torch.equal(_params(a), _params(b))


def test_resume_continues_exactly(tiny_sd_path, tmp_path):
    straight = Trainer(_cfg(tiny_sd_path, 6), run_dir=tmp_path / "straight")
    straight.fit()

    first = Trainer(_cfg(tiny_sd_path, 3), run_dir=tmp_path / "split")
    first.fit()
    resumed = Trainer(_cfg(tiny_sd_path, 6), run_dir=tmp_path / "split")
    resumed.load_checkpoint()
    assert resumed.step == 3
    resumed.fit()
    assert torch.equal(_params(straight), _params(resumed))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]

    cfg, scene, step = load_scene(tmp_path / "split")
    assert step == 6 and torch.equal(torch.cat([p.flatten() for p in scene.parameters()]), _params(resumed))


def test_nan_raises_clear_error_and_keeps_checkpoint(tiny_sd_path, tmp_path, monkeypatch):
    tr = Trainer(_cfg(tiny_sd_path, 4), run_dir=tmp_path)
    tr.fit()  # writes a checkpoint at step 3 and 4
    ckpt = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    tr.cfg.trainer.steps = 6
    encode = tr.guidance.encode_images
    monkeypatch.setattr(tr.guidance, "encode_images", lambda rgb: encode(rgb) * float("nan"))
    with pytest.raises(NonFiniteError, match="step 4"):
        tr.fit()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == ckpt


def test_two_stage_run_hands_off_resumes_in_fine_stage_and_exports(tiny_sd_path, tmp_path):
    from dreamgen.export import export_mesh

    fine = ["stages=[nerf,dmtet]", "fine.steps=2", "fine.resolution=16", "fine.geometry.grid_resolution=8",
            "export.texture_size=64", "export.turntable_frames=0"]
    tr = Trainer(_cfg(tiny_sd_path, 3, fine), run_dir=tmp_path)
    tr.fit()
    assert tr.scene.stage == "dmtet" and tr.step == 5
    assert (tmp_path / "previews" / "coarse.png").exists()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["nerf"] * 3 + ["dmtet"] * 2
    assert tr.loss.cfg.t_max == 0.5 and tr.cfg.loss.t_max != 0.5  # the fine noise range, on the loss's own copy

    resumed = Trainer(_cfg(tiny_sd_path, 3, [*fine, "fine.steps=3"]), run_dir=tmp_path)
    resumed.load_checkpoint()
    assert resumed.scene.stage == "dmtet" and resumed.step == 5
    assert torch.equal(_params(resumed), _params(tr))
    resumed.fit()
    assert resumed.step == 6

    cfg, scene, step = load_scene(tmp_path)
    assert scene.stage == "dmtet" and step == 6
    paths = export_mesh(scene.particles[0], cfg.export, tmp_path)
    import trimesh

    mesh = trimesh.load(paths["glb"], force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.kind == "texture"


def test_prebuilt_guidance_gives_the_same_run(tmp_path):
    """Batch workers pass a cached guidance: the run must equal one that builds its own (building the embedded
    prior draws random initial weights before loading its own)."""
    def cfg():
        return load_config(None, [*TINY, "trainer.steps=2"], prompt="a red cube", seed=3, **{"guidance.name": "shapes"})

    own = Trainer(cfg(), run_dir=tmp_path / "own")
    own.fit()
    shared = Trainer(cfg(), run_dir=tmp_path / "shared", guidance=own.guidance)
    shared.fit()
    assert torch.equal(_params(own), _params(shared))
