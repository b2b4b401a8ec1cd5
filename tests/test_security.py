"""Nothing a user receives runs code: checkpoints load with weights_only, SD weights are safetensors unless the user
opts in, and a config names importable code only for modules the user allowed."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from dreamgen.config import load_config
from dreamgen.errors import CheckpointError, GuidanceLoadError
from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from dreamgen.session import Session, load_scene
from dreamgen.testing import SMALL_RUN


class _Payload:
    """Unpickling this calls ``open(path, "w")``: what a crafted file could do with any function."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def finished_run(tmp_path):
    cfg = load_config(None, [*SMALL_RUN, "renderer.num_samples=8", "trainer.steps=2", "trainer.progress=false",
                             "trainer.preview_every=0"], prompt="a red cube", **{"guidance.name": "shapes"})
    session = Session.new(cfg, run_dir=tmp_path / "run")
    session.fit()
    return session.run_dir


@pytest.mark.parametrize("command", ["resume", "export", "eval"])
def test_a_crafted_checkpoint_runs_no_code(finished_run, tmp_path, command):
    marker = tmp_path / "pwned"
    for name in ("last.pt", "prev.pt"):
        with open(finished_run / "checkpoints" / name, "wb") as f:
            pickle.dump({"step": 1, "scene": _Payload(marker)}, f)
    argv = {"resume": ["run", "--resume", str(finished_run)], "export": ["export", str(finished_run)],
            "eval": ["eval", str(finished_run)]}[command]
    res = subprocess.run([sys.executable, "-m", "dreamgen", *argv], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and not marker.exists()
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: no usable checkpoint") and "last.pt is unreadable" in err, res.stderr[-1500:]
    with pytest.raises(CheckpointError):
        load_scene(finished_run)


def _pickle_only(pipe, tmp_path):
    """A copy of the tiny pipeline whose UNet weights are a pickle file, as old SD folders ship them."""
    copy = shutil.copytree(pipe, tmp_path / "pickled")
    unet = copy / "unet"
    from safetensors.torch import load_file

    torch.save(load_file(str(unet / "diffusion_pytorch_model.safetensors")), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    return copy


def test_pickle_weights_are_refused_unless_allowed(tiny_sd_path, tmp_path, caplog):
    pickled = _pickle_only(tiny_sd_path, tmp_path)
    with pytest.raises(GuidanceLoadError, match="refusing to load .*diffusion_pytorch_model.bin: pickle weights can "
                                                "run code .* guidance.allow_pickle=true"):
        StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(pickled)))
    with caplog.at_level("WARNING", logger="dreamgen"):
        guidance = StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(pickled), allow_pickle=True))
    assert "loading pickle weights" in caplog.text and guidance.latent_channels == 4
