"""``dreamgen view``: which runs a folder holds, what each card shows, the vendored viewer, serving, bad input.
(The browser test, tests/test_gallery_browser.py, checks that the page actually renders the models.)"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import urllib.request
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from dreamgen.errors import DreamgenError
from dreamgen.gallery import MODEL_VIEWER_JS, MODEL_VIEWER_VERSION, find_cards, make_server, write_gallery


def make_run(run_dir: Path, prompt: str, *, loss: str = "sds", seed: int = 0, evaluation: dict | None = None,
             mesh: bool = True) -> Path:
    """A run folder's files as the gallery reads them (the mesh is a placeholder: the gallery does not parse it)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"prompt": prompt, "seed": seed, "loss": {"name": loss},
                                                          "trainer": {"steps": 3}}))
    records = [{"step": s, "loss": 10.0 / s, "time_render": 0.5, "time_loss": 0.25} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "lo')
    if evaluation is not None:
        (run_dir / "eval.json").write_text(json.dumps({**evaluation, "shape_scores": {"cube": 0.7}}))
    if mesh:
        (run_dir / "mesh.glb").write_bytes(b"glTF")
        (run_dir / "turntable.gif").write_bytes(b"GIF89a")
    return run_dir


def cards_html(index: Path) -> list[str]:
    return re.findall(r'<article class="card".*?</article>', index.read_text(), re.S)


def test_run_folder_card_shows_the_run(tmp_path: Path):
    run = make_run(tmp_path / "a-red-cube-20261126", "a red cube", loss="vsd", seed=4, evaluation={
        "silhouette_iou": 0.78, "volumetric_iou": 0.72, "colour_error": 0.053, "janus": None, "rank1": False})
    index = write_gallery(run)
    assert index == run / "index.html"
    (card,) = cards_html(index)
    assert '<model-viewer src="mesh.glb" alt="a red cube"' in card and 'src="turntable.gif"' in card
    for text in ("<h2>a red cube</h2>", "<th>loss</th><td>vsd</td>", "<th>seed</th><td>4</td>",
                 "<th>steps</th><td>3/3</td>", "<th>final loss</th><td>3.333</td>",
                 "<th>time in steps</th><td>2.2 s</td>",
                 "<th>silhouette IoU</th><td>0.78</td>", "<th>volumetric IoU</th><td>0.72</td>",
                 "<th>colour error</th><td>0.053</td>", "<th>object rank-1</th><td>no</td>"):
        assert text in card, text
    assert "Janus" not in card  # unknown for a shape without a front
    page = index.read_text()
    assert f'<script type="module" src="{MODEL_VIEWER_JS}">' in page
    assert (run / MODEL_VIEWER_JS).read_bytes() == files("dreamgen").joinpath("viewer", MODEL_VIEWER_JS).read_bytes()


def test_a_two_stage_run_counts_the_steps_of_both(tmp_path: Path):
    run = make_run(tmp_path / "a-red-cube-20261130", "a red cube")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "stages": ["nerf", "dmtet"], "trainer": {"steps": 2},
                                                     "fine": {"steps": 1}}))
    (card,) = cards_html(write_gallery(run))
    assert "<th>steps</th><td>3/3</td>" in card and "texture loss" not in card


def test_a_run_with_a_texture_stage_shows_its_loss(tmp_path: Path):
    run = make_run(tmp_path / "a-yellow-house-20261130", "a yellow house")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "stages": ["nerf", "dmtet", "texture"],
                                                     "texture": {"loss": "sds", "steps": 1}}))
    (card,) = cards_html(write_gallery(run))
    assert "<th>loss</th><td>sds</td>" in card and "<th>texture loss</th><td>sds</td>" in card


def test_batch_folder_follows_the_manifest(tmp_path: Path):
    make_run(tmp_path / "b" / "cube", "a red cube")
    make_run(tmp_path / "b" / "ring", "a blue torus <i>", evaluation={"volumetric_iou": 0.5})
    items = [{"name": "ring", "prompt": "a blue torus <i>", "run_dir": "ring", "status": "done", "seconds": 81.25,
              "mesh": "ring/mesh.glb"},
             {"name": "cube", "prompt": "a red cube", "run_dir": "cube", "status": "done", "seconds": 90.0,
              "mesh": "cube/mesh.glb"},
             {"name": "bad", "prompt": "a green cube", "run_dir": "bad", "status": "failed",
              "error": "unknown loss 'nope'"}]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"version": 1, "source": "p.txt", "items": items}))
    assert [c.name for c in find_cards(tmp_path / "b")] == ["ring", "cube", "bad"]  # the manifest's order
    ring, cube, bad = cards_html(write_gallery(tmp_path / "b"))
    assert '<model-viewer src="ring/mesh.glb"' in ring and "a blue torus &lt;i&gt;" in ring  # escaped
    assert "<th>time</th><td>81.2 s</td>" in ring  # the batch's wall time, not the summed step timings
    assert "<th>status</th><td>done</td>" in cube
    assert "<model-viewer" not in bad and "unknown loss &#x27;nope&#x27;" in bad


def test_folder_of_runs_without_manifest(tmp_path: Path):
    make_run(tmp_path / "outputs" / "b-run", "a blue sphere")
    make_run(tmp_path / "outputs" / "a-run", "a red cube", mesh=False)
    (tmp_path / "outputs" / "notes").mkdir()
    first, second = cards_html(write_gallery(tmp_path / "outputs"))
    assert "a red cube" in first and "<model-viewer" not in first  # no mesh yet: numbers only
    assert '<model-viewer src="b-run/mesh.glb"' in second


@pytest.mark.parametrize("setup", ["empty", "missing", "file"])
def test_no_runs_is_a_one_line_error(tmp_path: Path, setup: str):
    target = tmp_path / "x"
    if setup == "empty":
        target.mkdir()
        (target / "readme.txt").write_text("no runs here")
    elif setup == "file":
        target.write_text("")
    with pytest.raises(DreamgenError, match="holds no runs" if setup == "empty" else "is not a folder"):
        write_gallery(target)
    if setup == "empty":
        assert [p.name for p in target.iterdir()] == ["readme.txt"]  # nothing written


def test_cli_view_reports_bad_input_on_one_line(tmp_path: Path):
    res = subprocess.run([sys.executable, "-m", "dreamgen", "view", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "holds no runs" in res.stderr
    make_run(tmp_path / "run", "a red cube")
    res = subprocess.run([sys.executable, "-m", "dreamgen", "view", str(tmp_path / "run"), "--port", "8000"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--port needs --serve" in res.stderr


def test_server_serves_the_gallery_with_viewer_types(tmp_path: Path):
    run = make_run(tmp_path / "run", "a red cube")
    write_gallery(run)
    server = make_server(run)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address
        assert host == "127.0.0.1" and port > 0  # a free port was picked
        types = {}
        for name in ("index.html", MODEL_VIEWER_JS, "mesh.glb"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}") as response:
                types[name] = response.headers["Content-Type"]
                assert response.read() == (run / name).read_bytes()
        with pytest.raises(DreamgenError, match=f"127.0.0.1:{port}.*--port"):
            make_server(run, port)  # taken
    finally:
        server.shutdown()
        server.server_close()
    assert types["index.html"].startswith("text/html")
    assert types[MODEL_VIEWER_JS].startswith("text/javascript")  # module scripts need a JavaScript type
    assert types["mesh.glb"] == "model/gltf-binary"


def test_vendored_viewer_matches_its_record():
    viewer = files("dreamgen").joinpath("viewer")
    readme = viewer.joinpath("README.md").read_text()
    assert f"`@google/model-viewer`](https://github.com/google/model-viewer) **{MODEL_VIEWER_VERSION}**" in readme
    assert hashlib.sha256(viewer.joinpath(MODEL_VIEWER_JS).read_bytes()).hexdigest() in readme
    for licence in re.findall(r"\]\((LICENSE-[\w.-]+)\)", readme):
        assert viewer.joinpath(licence).is_file(), licence
