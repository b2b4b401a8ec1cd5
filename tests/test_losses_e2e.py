"""Every registered loss runs 3 real optimisation steps on the tiny SD pipeline, checkpoints, and resumes."""

from __future__ import annotations

import pytest
import torch

from dreamgen import registry
from dreamgen.config import load_config
from dreamgen.session import Session
from dreamgen.testing import SMALL_RUN

TINY = [*SMALL_RUN, "renderer.num_samples=8", "trainer.preview_every=0", "trainer.progress=false",
        "trainer.checkpoint_every=3", "trainer.steps=3"]
# Per-loss settings that keep the run tiny or give the loss what it needs.
EXTRA = {
    "rsd": ["trainer.particles=3"],
    "reward-sds": ["loss.n_noises=4", "loss.path_steps=2"],
    "dsd": ["loss.n_ddim_steps=2"],
}


def _trainer(tiny_sd_path, run_dir, loss, extra=()):
    cfg = load_config(None, [*TINY, *EXTRA.get(loss, []), *extra], prompt="a hamburger", seed=0,
                      **{"guidance.name": "stable-diffusion", "guidance.pretrained": str(tiny_sd_path),
                         "loss.name": loss})
    return Session.new(cfg, run_dir=run_dir).trainer


@pytest.fixture(scope="module")
def source_run(tiny_sd_path, tmp_path_factory):
    run = tmp_path_factory.mktemp("source")
    _trainer(tiny_sd_path, run, "sds").fit()
    return run


@pytest.mark.parametrize("loss", sorted(registry.entries("loss")))
def test_loss_runs_checkpoints_and_resumes(loss, tiny_sd_path, tmp_path, source_run):
    extra = [f"source_run={source_run}"] if loss == "dds" else []
    tr = _trainer(tiny_sd_path, tmp_path, loss, extra)
    before = torch.cat([p.detach().flatten() for p in tr.scene.parameters()]).clone()
    tr.fit()
    after = torch.cat([p.detach().flatten() for p in tr.scene.parameters()])
    assert torch.isfinite(after).all() and not torch.equal(before, after)

    resumed = Session.resume(tmp_path, steps=4).trainer
    assert resumed.step == 3
    for a, b in zip(resumed.loss.state_dict().values(), tr.loss.state_dict().values()):
        assert torch.equal(a, b)
    resumed.fit()
    assert resumed.step == 4


@pytest.mark.parametrize("loss", sorted(set(registry.entries("loss")) - {"dds"}))  # dds edits a run (`edit`)
def test_loss_runs_on_the_default_guidance(loss, tmp_path):
    """`dreamgen run "a red cube" --loss X` must work on the embedded prior as composed (its recipe included):
    no SD-vocabulary negative prompt the prior does not know, the particles the loss needs, both stages."""
    cfg = load_config(None, ["renderer.num_samples=8", "trainer.preview_every=0", "trainer.preview_views=1",
                             "trainer.preview_resolution=16", "trainer.progress=false", "trainer.steps=1",
                             "fine.steps=1", "fine.geometry.grid_resolution=8", "fine.geometry.distill_steps=1",
                             *[o for o in EXTRA.get(loss, []) if not o.startswith("trainer.")]],
                      prompt="a red cube", seed=0, **{"loss.name": loss})
    assert cfg.stages == ["nerf", "dmtet"]
    tr = Session.new(cfg, run_dir=tmp_path).trainer
    tr.fit()
    assert tr.step == 2 and tr.scene.stage.name == "dmtet"
    assert all(torch.isfinite(p).all() for p in tr.scene.parameters())
