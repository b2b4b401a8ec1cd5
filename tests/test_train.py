"""Trainer and session: real optimisation steps on the tiny SD pipeline, exact resume, determinism, stages,
safe checkpoints and their fallback, NaN and divergence handling."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dreamgen.testing import SMALL_RUN
from dreamgen.config import load_config
from dreamgen.errors import CheckpointError, ConfigError, DreamgenError, NonFiniteError
from dreamgen.session import Session, load_scene

TINY = [*SMALL_RUN, "renderer.num_samples=12", "trainer.preview_every=0", "trainer.progress=false",
        "export.resolution=32"]


def _cfg(tiny_sd_path, steps, extra=()):
    return load_config(None, [*TINY, *extra], prompt="a hamburger", seed=3,
                       **{"guidance.name": "stable-diffusion", "guidance.pretrained": str(tiny_sd_path),
                          "trainer.steps": steps, "trainer.checkpoint_every": 3})


def _trainer(cfg, run_dir, guidance=None):
    return Session.new(cfg, guidance=guidance, run_dir=run_dir).trainer


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.scene.parameters()])


def test_steps_change_parameters_and_log_phases(tiny_sd_path, tmp_path):
    tr = _trainer(_cfg(tiny_sd_path, 3), tmp_path)
    before = _params(tr).clone()
    tr.fit()
    assert not torch.equal(before, _params(tr))
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(r["time_render"] > 0 and r["time_backward"] > 0 for r in recs)
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "previews" / "final.png").exists()
    assert (tmp_path / "config.yaml").exists()


def test_seed_makes_cpu_run_deterministic(tiny_sd_path, tmp_path):
    a = _trainer(_cfg(tiny_sd_path, 2), tmp_path / "a")
    a.fit()
    torch.manual_seed(12345)  # the process's own random state must not matter
    b = _trainer(_cfg(tiny_sd_path, 2), tmp_path / "b")
    b.fit()
    assert torch.equal(_params(a), _params(b))


def test_resume_continues_exactly(tiny_sd_path, tmp_path):
    straight = _trainer(_cfg(tiny_sd_path, 6), tmp_path / "straight")
    straight.fit()

    first = _trainer(_cfg(tiny_sd_path, 3), tmp_path / "split")
    first.fit()
    resumed = Session.resume(tmp_path / "split", steps=6).trainer
    assert resumed.step == 3
    resumed.fit()
    assert torch.equal(_params(straight), _params(resumed))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]

    cfg, scene, step = load_scene(tmp_path / "split")
    assert step == 6 and torch.equal(torch.cat([p.flatten() for p in scene.parameters()]), _params(resumed))


def test_checkpoints_load_without_code_and_fall_back_to_prev(tiny_sd_path, tmp_path, caplog):
    tr = _trainer(_cfg(tiny_sd_path, 6), tmp_path)
    tr.fit()  # checkpoints at steps 3 and 6: prev.pt holds step 3
    ckpts = tmp_path / "checkpoints"
    assert torch.load(ckpts / "prev.pt", weights_only=True)["step"] == 3
    assert torch.load(ckpts / "last.pt", weights_only=True)["step"] == 6
    (ckpts / "last.pt").write_bytes((ckpts / "last.pt").read_bytes()[:1000])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="dreamgen"):
        cfg, scene, step = load_scene(tmp_path)
    assert step == 3 and "last.pt is unreadable" in caplog.text and "prev.pt" in caplog.text
    (ckpts / "prev.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint .*last.pt is unreadable.*prev.pt is unreadable"):
        load_scene(tmp_path)


def test_a_torn_metrics_line_does_not_stop_a_resume(tiny_sd_path, tmp_path):
    _trainer(_cfg(tiny_sd_path, 3), tmp_path).fit()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.')  # a kill during the append of step 4's line
    resumed = Session.resume(tmp_path, steps=4).trainer
    resumed.fit()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("override,key", [("seed=4", "seed"), ("loss.name=vsd", "loss.name"),
                                          ("geometry.grid.n_levels=4", "geometry.grid.n_levels")])
def test_resume_refuses_what_the_checkpoint_depends_on(tiny_sd_path, tmp_path, override, key):
    _trainer(_cfg(tiny_sd_path, 3), tmp_path).fit()
    with pytest.raises(DreamgenError, match=f"{key} cannot change when resuming"):
        Session.resume(tmp_path, [override])


def test_nan_raises_clear_error_and_keeps_checkpoint(tiny_sd_path, tmp_path, monkeypatch):
    tr = _trainer(_cfg(tiny_sd_path, 4), tmp_path)
    tr.fit()  # writes checkpoints at step 3 and 4
    ckpt = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    tr.cfg.trainer.steps = 6
    encode = tr.guidance.encode_images
    monkeypatch.setattr(tr.guidance, "encode_images", lambda rgb: encode(rgb) * float("nan"))
    with pytest.raises(NonFiniteError, match="step 4.*checkpoint of step 4 .* can be resumed"):
        tr.fit()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == ckpt


def test_nan_at_the_first_step_says_no_checkpoint_exists(tiny_sd_path, tmp_path, monkeypatch):
    tr = _trainer(_cfg(tiny_sd_path, 2), tmp_path)
    encode = tr.guidance.encode_images
    monkeypatch.setattr(tr.guidance, "encode_images", lambda rgb: encode(rgb) * float("nan"))
    with pytest.raises(NonFiniteError, match="step 0.*no checkpoint was written yet"):
        tr.fit()


def test_divergence_is_reported(tiny_sd_path, tmp_path, caplog):
    tr = _trainer(_cfg(tiny_sd_path, 3, ["trainer.lr=1e6"]), tmp_path)
    with caplog.at_level(logging.WARNING, logger="dreamgen"):
        tr.fit()
    assert "diverged" in caplog.text and "lower trainer.lr" in caplog.text


def test_two_stage_run_hands_off_resumes_in_fine_stage_and_exports(tiny_sd_path, tmp_path):
    from dreamgen.export import export_mesh

    fine = ["stages=[nerf,dmtet]", "fine.steps=2", "fine.resolution=16", "fine.geometry.grid_resolution=8",
            "export.texture_size=64", "export.turntable_frames=0", "trainer.preview_every=3"]
    tr = _trainer(_cfg(tiny_sd_path, 3, fine), tmp_path)
    seen, rendered = [], []
    sample_t = tr.loss.core.sample_t
    tr.loss.core.sample_t = lambda n, step, total=1: seen.append(tr.loss.core.t_range(step)) or sample_t(n, step, total)
    render_views = tr.render_views
    tr.render_views = lambda *a, **k: rendered.append(tr.step) or render_views(*a, **k)
    tr.fit()
    assert tr.scene.stage.name == "dmtet" and tr.step == 5
    # Previews: step 3 (the NeRF's last step) rendered once for step_000003.png and nerf.png; step 5 once for final.
    previews = tmp_path / "previews"
    assert sorted(p.name for p in previews.iterdir()) == ["final.png", "nerf.png", "step_000003.png"]
    assert (previews / "nerf.png").read_bytes() == (previews / "step_000003.png").read_bytes()
    assert sorted(set(rendered)) == [3, 5] and len(rendered) == 4  # shaded + albedo per preview
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["nerf"] * 3 + ["dmtet"] * 2
    # The fine stage's noise range reached the loss through its input; the loss's config is untouched.
    assert [hi for _, hi in seen[3:]] == [500, 500] and seen[0][1] > 500
    assert tr.loss.cfg is tr.cfg.loss and tr.cfg.loss.t_max != 0.5

    resumed = Session.resume(tmp_path, ["fine.steps=3"]).trainer
    assert resumed.scene.stage.name == "dmtet" and resumed.step == 5
    assert torch.equal(_params(resumed), _params(tr))
    resumed.fit()
    assert resumed.step == 6

    cfg, scene, step = load_scene(tmp_path)
    assert scene.stage.name == "dmtet" and step == 6
    paths = export_mesh(scene.particles[0], cfg.export, tmp_path)
    import trimesh

    mesh = trimesh.load(paths["glb"], force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.kind == "texture"


def test_texture_stage_keeps_the_surface_trains_the_texture_with_its_own_loss_and_resumes(tiny_sd_path, tmp_path):
    """stages=[nerf,dmtet,texture]: the surface (SDF, deformation) is the DMTet stage's, bit for bit; the texture
    moves; the stage's loss is texture.loss (refine) with its ω and noise range; its first front_steps cameras look
    at the front; a resume in the stage continues it exactly."""
    stages = ["stages=[nerf,dmtet,texture]", "fine.steps=1", "fine.resolution=16", "fine.geometry.grid_resolution=8",
              "texture.steps=3", "texture.front_steps=2", "texture.front_azimuth=5", "texture.guidance_scale=3",
              "texture.front_t_min=0.3", "texture.front_t_max=0.4", "texture.t_min=0.1", "texture.t_max=0.2",
              "fine.lambda_normal_consistency=10"]
    tr = _trainer(_cfg(tiny_sd_path, 2, stages), tmp_path)
    while tr.scene.stage.name != "texture":
        tr.train_step() if tr.step < tr.stage_end(tr.scene.stage_index) else tr.enter_stage(tr.scene.stage_index + 1)
    surface = [p.detach().clone() for p in (tr.geometry.sdf, tr.geometry.deform)]
    texture = torch.cat([p.detach().flatten() for p in tr.geometry.encoding.parameters()]).clone()
    assert tr.loss is not tr.run_loss and tr.loss.cfg.name == "refine" and tr.loss.cfg.guidance_scale == 3.0
    assert {g["name"] for g in tr.optimizer.param_groups} == {"geometry.grid", "geometry.net", "background"}
    azimuths, t_seen = [], []
    sample = tr.sampler.sample
    tr.sampler.sample = lambda step, generator=None: (azimuths.append(c := sample(step, generator)) or c)
    sample_t = tr.loss.core.sample_t
    tr.loss.core.sample_t = lambda n, step, total=1: t_seen.append(tr.loss.core.t_range(step)) or sample_t(n, step,
                                                                                                           total)
    records = [tr.train_step() for _ in range(2)]
    assert len(azimuths) == 2 and all(float(c.azimuth.abs().max()) <= 5.0 for c in azimuths)
    assert t_seen == [(300, 400)] * 2  # the front phase's noise range
    assert "normal_consistency_loss" not in records[0]  # a constant on a frozen surface: not logged as a loss
    assert all(torch.equal(a, b) for a, b in zip(surface, (tr.geometry.sdf, tr.geometry.deform)))
    assert not torch.equal(texture, torch.cat([p.detach().flatten() for p in tr.geometry.encoding.parameters()]))
    tr.save_checkpoint()
    tr.train_step()
    assert t_seen[-1] == (100, 200)
    gen = torch.Generator().manual_seed(0)
    assert max(float(sample(tr.step, gen).azimuth.abs()) for _ in range(20)) > 5.0  # the front phase is over

    resumed = Session.resume(tmp_path).trainer
    assert resumed.scene.stage.name == "texture" and resumed.step == 5 and resumed.loss.cfg.name == "refine"
    resumed.train_step()
    assert torch.equal(_params(resumed), _params(tr))


def test_dmtet_stage_can_keep_the_nerfs_texture_and_train_the_surface_only(tiny_sd_path, tmp_path):
    """fine.train_texture=false: the texture handed off from the NeRF stays bit for bit, the surface trains; a
    texture stage after it trains the texture again."""
    stages = ["stages=[nerf,dmtet,texture]", "fine.train_texture=false", "fine.steps=2", "fine.resolution=16",
              "fine.geometry.grid_resolution=8", "texture.steps=1"]
    tr = _trainer(_cfg(tiny_sd_path, 2, stages), tmp_path)

    def texture():
        return torch.cat([p.detach().flatten() for m in (tr.geometry.encoding, tr.geometry.mlp)
                          for p in m.parameters()]).clone()

    def surface():
        return torch.cat([tr.geometry.sdf.detach().flatten(), tr.geometry.deform.detach().flatten()]).clone()

    for _ in range(2):
        tr.train_step()
    tr.enter_stage(1)
    handed_off, start = texture(), surface()
    assert {g["name"] for g in tr.optimizer.param_groups} == {"geometry.sdf", "background"}
    for _ in range(2):
        tr.train_step()
    assert torch.equal(handed_off, texture()) and not torch.equal(start, surface())
    tr.fit()
    assert tr.scene.stage.name == "texture" and not torch.equal(handed_off, texture())


def test_a_finished_run_resumes_into_an_added_texture_stage(tiny_sd_path, tmp_path):
    """A resume may append stages (a finished two-stage run given a texture stage), never change the run's own."""
    fine = ["stages=[nerf,dmtet]", "fine.steps=1", "fine.resolution=16", "fine.geometry.grid_resolution=8"]
    tr = _trainer(_cfg(tiny_sd_path, 2, fine), tmp_path)
    tr.fit()
    surface = torch.cat([tr.geometry.sdf.detach().flatten(), tr.geometry.deform.detach().flatten()])
    with pytest.raises(DreamgenError, match=r"stages=\['nerf'\]: a resume may add stages after the run's \['nerf', "):
        Session.resume(tmp_path, ["stages=[nerf]"])
    resumed = Session.resume(tmp_path, ["stages=[nerf,dmtet,texture]", "texture.steps=2"]).trainer
    resumed.fit()
    assert resumed.scene.stage.name == "texture" and resumed.step == 5
    assert torch.equal(surface, torch.cat([resumed.geometry.sdf.detach().flatten(),
                                           resumed.geometry.deform.detach().flatten()]))
    assert load_scene(tmp_path)[0].stages == ["nerf", "dmtet", "texture"]


def test_texture_stage_config_is_checked(tiny_sd_path):
    with pytest.raises(ConfigError, match="texture.loss='nope': not a registered loss"):
        _cfg(tiny_sd_path, 2, ["stages=[nerf,dmtet,texture]", "texture.loss=nope"])
    with pytest.raises(ConfigError, match=r"valid are \[nerf\], \[nerf, dmtet\] and \[nerf, dmtet, texture\]"):
        _cfg(tiny_sd_path, 2, ["stages=[nerf,texture]"])
    with pytest.raises(ConfigError, match="texture.front_t_min=0.5 and texture.front_t_max=0.4: front_t_min must be"):
        _cfg(tiny_sd_path, 2, ["stages=[nerf,dmtet,texture]", "texture.front_t_min=0.5", "texture.front_t_max=0.4"])
    with pytest.raises(ConfigError, match="texture.weights=v2: --guidance stable-diffusion loads no prior weights"):
        _cfg(tiny_sd_path, 2, ["stages=[nerf,dmtet,texture]", "texture.weights=v2"])


def test_prebuilt_guidance_gives_the_same_run(tmp_path):
    """Batch workers pass a cached guidance: the run must equal one that builds its own (building the embedded
    prior draws random initial weights before loading its own)."""
    def cfg():
        return load_config(None, [*TINY, "trainer.steps=2"], prompt="a red cube", seed=3, **{"guidance.name": "shapes"})

    own = _trainer(cfg(), tmp_path / "own")
    own.fit()
    shared = _trainer(cfg(), tmp_path / "shared", guidance=own.guidance)
    shared.fit()
    assert torch.equal(_params(own), _params(shared))


def test_the_bake_trains_the_handed_off_texture_and_leaves_the_surface(tiny_sd_path, tmp_path):
    """fine.bake_steps: at the hand-off the surface's texture is fitted to the NeRF's renders
    (tests/test_dmtet.py checks the fit); the surface stays as handed off, and no gradient is left behind."""
    fine = ["stages=[nerf,dmtet]", "fine.steps=1", "fine.resolution=16", "fine.geometry.grid_resolution=8",
            "fine.bake_views=2"]
    textures, surfaces = {}, {}
    for bake in (0, 3):
        tr = _trainer(_cfg(tiny_sd_path, 2, [*fine, f"fine.bake_steps={bake}"]), tmp_path / str(bake))
        for _ in range(2):
            tr.train_step()
        tr.enter_stage(1)
        textures[bake] = torch.cat([p.detach().flatten() for m in (tr.geometry.encoding, tr.geometry.mlp)
                                    for p in m.parameters()])
        surfaces[bake] = torch.cat([tr.geometry.sdf.detach().flatten(), tr.geometry.deform.detach().flatten()])
        assert all(p.grad is None for p in tr.geometry.parameters())
    assert not torch.equal(textures[0], textures[3]) and torch.equal(surfaces[0], surfaces[3])
