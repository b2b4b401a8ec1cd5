"""The Ray executor on a local 2-CPU Ray instance: same manifest outcome as the local executor."""

from __future__ import annotations

import json
import sys

import pytest

ray = pytest.importorskip("ray")

from dreamgen.testing import SMALL_RUN
from dreamgen.cli import main  # noqa: E402

TINY = [*SMALL_RUN, "trainer.steps=2", "renderer.num_samples=12", "export.resolution=32",
        "export.texture=false", "export.turntable_frames=0", "trainer.preview_every=0",
        "trainer.preview_resolution=16", "trainer.preview_views=4", "trainer.progress=false"]
SAME = ("status", "step", "steps", "run_dir", "mesh", "attempts", "spec", "device")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _batch(monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["dreamgen", "batch", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return e.code
    return 0


def test_ray_executor_matches_local(monkeypatch, tmp_path, local_ray):
    f = tmp_path / "p.yaml"
    f.write_text("- a red cube\n- a blue sphere\n- prompt: a green cube\n  loss: nope\n")
    assert _batch(monkeypatch, f, "--out", tmp_path / "ray", "--executor", "ray", *TINY) == 2
    assert ray.is_initialized()  # an instance the caller started is left running
    assert _batch(monkeypatch, f, "--out", tmp_path / "local", *TINY) == 2

    ray_items, local_items = ({r["name"]: r for r in json.loads((tmp_path / d / "manifest.json").read_text())["items"]}
                              for d in ("ray", "local"))
    assert list(ray_items) == list(local_items) == ["a-red-cube", "a-blue-sphere", "a-green-cube"]
    for name, r in ray_items.items():
        assert {k: r[k] for k in SAME} == {k: local_items[name][k] for k in SAME}, name
    assert ray_items["a-green-cube"]["error"] == local_items["a-green-cube"]["error"]
    assert [r["status"] for r in ray_items.values()] == ["done", "done", "failed"]
    for r in ray_items.values():
        if r["status"] == "done":
            assert (tmp_path / "ray" / r["mesh"]).is_file()
            assert r["final_loss"] == pytest.approx(local_items[r["name"]]["final_loss"], rel=1e-3)
