"""``dreamgen probe``: a run's renders against the guidance's one-step denoised estimates of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from PIL import Image

from dreamgen.config import load_config
from dreamgen.evaluation.probe import probe_run
from dreamgen.session import Session
from dreamgen.testing import SMALL_RUN

TINY = [*SMALL_RUN, "trainer.steps=3", "renderer.num_samples=12", "export.resolution=32", "export.texture=false",
        "export.turntable_frames=0", "trainer.preview_every=0", "trainer.progress=false"]


@pytest.fixture(scope="module")
def cube_run(tmp_path_factory) -> Path:
    """Three steps of "a red cube" on the embedded prior (16-px renders)."""
    out = tmp_path_factory.mktemp("probe")
    Session.new(load_config(None, TINY, prompt="a red cube", out_dir=str(out))).run(None)
    return next(out.iterdir())


def test_denoised_estimate_tends_to_the_render_as_noise_vanishes(cube_run):
    p = probe_run(cube_run, [0.0, 180.0], [0.002, 0.3, 0.9], guidance_scale=1.0, device="cpu")
    assert p.render.shape == (2, 32, 32, 3) and p.x0.shape == (3, 2, 32, 32, 3)  # the prior's 32 px, upsampled
    pull = p.pull  # [T,V]
    # x̂0 = (x_t − σ_t·ε̂)/α_t -> x as σ_t -> 0: the render is almost returned at the smallest t ...
    assert pull[0].max() < 0.02, pull
    # ... and the guidance's own picture takes over as the noise grows.
    assert (pull[1:] > 3 * pull[0]).all(), pull


def test_the_guidance_scale_matters_and_the_noise_is_seeded(cube_run):
    a = probe_run(cube_run, [0.0], [0.5], guidance_scale=1.0, device="cpu")
    b = probe_run(cube_run, [0.0], [0.5], guidance_scale=1.0, device="cpu")
    c = probe_run(cube_run, [0.0], [0.5], guidance_scale=30.0, device="cpu")
    assert torch.equal(a.x0, b.x0)
    assert (a.x0 - c.x0).abs().mean() > 0.01


def test_probe_cli_writes_a_labelled_sheet(cube_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "probe.png"
    code, cap = run_cli(monkeypatch, capsys, "probe", cube_run, "--out", out, "--azimuth", "0", "--azimuth", "90",
                        "--azimuth", "180", "--t", "0.3", "--t", "0.6", "--elevation", "60")
    assert code == 0, cap.err
    rows = [line.split() for line in cap.out.splitlines() if line.strip().startswith("t =")]
    assert [r[2] for r in rows] == ["0.3", "0.6"] and all(len(r) == 3 + 3 for r in rows)
    img = Image.open(out)
    # three views of 32 px and three image rows (renders, two noise levels), 3x, plus the labels
    assert img.width > 3 * 32 * 3 and img.height > 3 * 32 * 3


def test_probe_refuses_a_noise_level_outside_0_1(cube_run, monkeypatch, capsys):
    code, cap = run_cli(monkeypatch, capsys, "probe", cube_run, "--t", "1.5")
    assert code == 2 and "noise level 1.5" in cap.err and "Traceback" not in cap.err
