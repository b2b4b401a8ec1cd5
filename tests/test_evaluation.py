"""``dreamgen eval`` on exported meshes and ``dreamgen league``: grids, scoring, the written table, resuming."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
from cli_helpers import run_cli
from export_helpers import PEAK, WorldObject, fake_run

from dreamgen.config import load_config
from dreamgen.errors import ConfigError, PromptError
from dreamgen.evaluation.league import grid_names, load_grid
from dreamgen.evaluation.mesh import evaluate_mesh
from dreamgen.export import ExportConfig
from dreamgen.testing import SMALL_RUN


# ---- the exported mesh against the exact object -------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_glbs(tmp_path_factory) -> dict[str, Path]:
    """The world's torus and cube exported (as a run would: cleanup on, glTF frame) from their exact SDFs."""
    cfg = ExportConfig(resolution=48, threshold=PEAK / 2, texture=False, turntable_frames=0)
    root = tmp_path_factory.mktemp("exact")
    return {shape: fake_run(root / shape, WorldObject(shape), f"a red {shape}", cfg)["glb"]
            for shape in ("torus", "cube")}


def test_mesh_eval_scores_the_exact_objects_near_perfect(exact_glbs):
    torus = evaluate_mesh(exact_glbs["torus"], "a red torus")
    cube = evaluate_mesh(exact_glbs["cube"], "a red cube")
    for m in (torus, cube):
        assert m["mesh_volumetric_iou"] > 0.85 and m["chamfer"] < 0.02 and m["pieces"] == 1, m
    assert (torus["genus"], torus["true_genus"], torus["genus_right"]) == (1, 1, True)
    assert (cube["genus"], cube["true_genus"], cube["genus_right"]) == (0, 0, True)


def test_mesh_eval_tells_the_wrong_object(exact_glbs):
    right = evaluate_mesh(exact_glbs["cube"], "a red cube")
    wrong = evaluate_mesh(exact_glbs["cube"], "a red torus")  # a cube read as a torus: no hole, wrong volume
    assert wrong["genus_right"] is False and wrong["mesh_volumetric_iou"] < right["mesh_volumetric_iou"] - 0.2
    assert wrong["chamfer"] > 2 * right["chamfer"]


# ---- grids --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, error, match", [
    ("prompts: [a red cube]\nbogus: 1\n", ConfigError, "unknown key 'bogus'"),
    ("seeds: [0]\n", ConfigError, "no prompts"),
    ("prompts: [a corgi]\n", PromptError, "corgi"),
    ("prompts: [a red cube]\nmethods:\n  x: {lr: 3}\n", ConfigError, "method 'x' has unknown field 'lr'"),
    ("prompts: [a red cube\n", ConfigError, "cannot parse league grid"),
])
def test_bad_grid_files_are_one_line_errors(tmp_path, text, error, match):
    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(error, match=match):
        load_grid(str(f))
    with pytest.raises(ConfigError, match="no league grid file or name 'nope'; grids: .*quick"):
        load_grid("nope")


@pytest.mark.parametrize("name", grid_names())
def test_every_packaged_grid_composes_every_run(name):
    grid = load_grid(name)
    items = grid.items()
    assert len(items) == len(grid.methods) * len(grid.prompts) * len(grid.seeds)
    guidance = set()
    for it in items:
        cfg = load_config(None, list(it.overrides), prompt=it.prompt, seed=it.seed,
                          **({"loss.name": it.loss} if it.loss else {}))
        guidance.add(cfg.guidance.name)
    assert guidance <= {"shapes", "shapes64", "shapes-cam"}  # the world's prompts run on the embedded prior


# ---- a run's own surface, repainted ------------------------------------------------------------------------------
@pytest.mark.parametrize("stages", ["[nerf]", "[nerf,dmtet]"])
def test_a_run_repainted_keeps_its_shape_and_scores_on_it(tmp_path, stages):
    import torch

    from dreamgen.evaluation.run import evaluate_run, repainted
    from dreamgen.session import Session, load_scene
    from dreamgen.world.metrics import arc_cameras

    fine = ["fine.steps=1", "fine.resolution=16", "fine.geometry.grid_resolution=8"]
    cfg = load_config(None, [*TINY, "trainer.steps=2", f"stages={stages}", *fine, "export.turntable_frames=0"],
                      prompt="a yellow house", out_dir=str(tmp_path))
    Session.new(cfg).run(None)
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    _, scene, _ = load_scene(run)
    renderer, geometry = scene.renderers[0], scene.particles[0]
    renderer.eval()
    cams = arc_cameras(0.0, 2, 24)

    def render(mode):
        with torch.no_grad():
            out = renderer(cams, shading=mode, train=False)
        return out["rgb"], out["opacity"]

    before = render("albedo")
    paints = {name: torch.tensor(rgb) for name, rgb in (("green", [0.1, 0.8, 0.2]), ("red", [0.9, 0.1, 0.1]))}
    seen = {}
    for name, rgb in paints.items():
        with repainted(geometry, lambda p, rgb=rgb: rgb.to(p).expand_as(p)):
            seen[name] = render("albedo")
        torch.testing.assert_close(seen[name][1], before[1])  # the shape untouched
    opacity = before[1]
    assert opacity.max() > 0.05
    # the paint is all that changed: the two renders differ by opacity · (green − red) in every pixel
    torch.testing.assert_close(seen["green"][0] - seen["red"][0], opacity * (paints["green"] - paints["red"]),
                               atol=1e-4, rtol=1e-3)
    after = render("albedo")
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # and its own paint back

    m = evaluate_run(run, n_views=2, resolution=24)
    assert m["stage"] == stages.strip("[]").split(",")[-1]
    assert m["front_feature_on_shape"] in (0.0, 0.25, 0.5, 0.75, 1.0) and m["janus_on_shape"] is not None
    saved = json.loads((run / "eval.json").read_text())
    assert saved["front_feature_on_shape_soft"] == m["front_feature_on_shape_soft"]


# ---- a whole league -----------------------------------------------------------------------------------------------
TINY = [*SMALL_RUN, "trainer.steps=3", "renderer.num_samples=12", "export.resolution=32", "export.texture=false",
        "export.turntable_frames=2", "export.turntable_resolution=32", "trainer.preview_every=0",
        "trainer.progress=false"]


def _league(monkeypatch, capsys, *args) -> tuple[int, str]:
    code, out = run_cli(monkeypatch, capsys, "league", *args)
    return code, out.out + out.err


def test_league_runs_scores_writes_and_resumes(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "mini.yaml"
    grid.write_text("prompts: [a red cube]\nseeds: [0]\nmethods:\n  sds: {}\n  csd:\n    loss: csd\n")
    out, doc = tmp_path / "league", tmp_path / "docs" / "league.md"
    code, text = _league(monkeypatch, capsys, grid, *TINY, "--out", out, "--doc", doc)
    assert code == 0, text
    league = json.loads((out / "league.json").read_text())
    assert [r["method"] for r in league["methods"]] == ["sds", "csd"]
    assert all(r["done"] == 1 == r["runs"] for r in league["methods"])
    for run in league["runs"]:
        assert 0 <= run["silhouette_iou"] <= 1 and 0 <= run["mesh_volumetric_iou"] <= 1 and run["chamfer"] > 0
        assert run["s_per_step"] > 0 and run["s_to_glb"] > 0 and run["janus"] is None  # a cube has no front
        assert (out / run["name"] / "eval.json").is_file()
    md = doc.read_text()
    assert "| sds | 1/1 |" in md and "| csd | 1/1 |" in md and "](league_contact_sheet.png)" in md
    assert (doc.parent / "league_contact_sheet.png").stat().st_size > 0
    evals = {p: p.stat().st_mtime_ns for p in out.glob("*/eval.json")}

    code, text = _league(monkeypatch, capsys, grid, *TINY, "--out", out)  # again: nothing to run or re-score
    assert code == 0, text
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/eval.json")} == evals
    items = json.loads((out / "manifest.json").read_text())["items"]
    assert all(i["status"] == "done" and i["attempts"] == 1 for i in items)

    # A method added to the grid since, and the league stopped by SIGTERM before it ran: the table of the finished
    # runs is written all the same, listing the new method as queued, and the command exits as interrupted.
    import dreamgen.batch.run as batch_run
    from dreamgen.errors import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted("interrupted by SIGTERM; continue with: dreamgen league", signal.SIGTERM)

    grid.write_text(grid.read_text() + "  nfsd:\n    loss: nfsd\n")
    (out / "league.json").unlink()
    monkeypatch.setattr(batch_run, "run_batch", stopped)
    code, text = _league(monkeypatch, capsys, grid, *TINY, "--out", out, "--doc", doc)
    assert code == 128 + signal.SIGTERM and "interrupted by SIGTERM" in text and "Traceback" not in text
    queued = [("sds", 1, 1), ("csd", 1, 1), ("nfsd", 0, 1)]
    rows = json.loads((out / "league.json").read_text())["methods"]
    assert [(r["method"], r["done"], r["runs"]) for r in rows] == queued
    assert "| nfsd | 0/1 |" in doc.read_text() and "| nfsd__a-red-cube__s0 | queued |" in doc.read_text()

    # --table-only: the table again from the manifest, nothing run (run_batch still raises if called)
    (out / "league.json").unlink()
    code, text = _league(monkeypatch, capsys, grid, "--out", out, "--table-only")
    assert code == 0, text
    rows = json.loads((out / "league.json").read_text())["methods"]
    assert [(r["method"], r["done"], r["runs"]) for r in rows] == queued
    # an eval.json written before the on-shape scores existed is scored again
    ev = sorted(out.glob("*/eval.json"))[0]
    ev.write_text(json.dumps({k: v for k, v in json.loads(ev.read_text()).items() if "on_shape" not in k}))
    code, text = _league(monkeypatch, capsys, grid, "--out", out, "--table-only")
    assert code == 0 and "front_feature_on_shape" in json.loads(ev.read_text()), text
    code, text = _league(monkeypatch, capsys, grid, "--out", tmp_path / "empty", "--table-only")
    assert code == 2 and "holds no league (no manifest.json)" in text and "Traceback" not in text
    assert not (tmp_path / "empty").exists()


def test_league_stopped_before_any_run_finished_keeps_the_doc(tmp_path, monkeypatch, capsys):
    """A league restarted into an empty folder and stopped at once has measured nothing: the table of an earlier,
    finished league at --doc stays as it was, and --table-only on that folder says there is nothing to tabulate."""
    import dreamgen.batch.run as batch_run
    from dreamgen.batch.manifest import Manifest
    from dreamgen.errors import Interrupted

    grid = tmp_path / "mini.yaml"
    grid.write_text("prompts: [a red cube]\nseeds: [0, 1]\nmethods:\n  sds: {}\n")
    out, doc = tmp_path / "league", tmp_path / "docs" / "mini.md"
    doc.parent.mkdir()
    doc.write_text("| sds | 2/2 | 0.80 |\n")

    def stopped(items, source, out_dir, opts, obj):
        Manifest.open(out_dir, items, source, [])  # started: every item queued, none done
        raise Interrupted("interrupted by SIGTERM; continue with: dreamgen league", signal.SIGTERM)

    monkeypatch.setattr(batch_run, "run_batch", stopped)
    code, text = _league(monkeypatch, capsys, grid, "--out", out, "--doc", doc)
    assert code == 128 + signal.SIGTERM and f"no run finished: {doc} left as it was" in text
    assert doc.read_text() == "| sds | 2/2 | 0.80 |\n" and not (out / "league.json").exists()
    code, text = _league(monkeypatch, capsys, grid, "--out", out, "--table-only", "--doc", doc)
    assert code == 2 and "has finished: nothing to tabulate" in text and "Traceback" not in text
    assert doc.read_text() == "| sds | 2/2 | 0.80 |\n"


def test_league_quick_flag_names_the_quick_grid(tmp_path, monkeypatch, capsys):
    import dreamgen.evaluation.league as league

    seen = []

    def load_and_stop(name):  # the grid the CLI asked for, then a one-line stop before any run
        seen.append(name)
        raise ConfigError("stop here")

    monkeypatch.setattr(league, "load_grid", load_and_stop)
    code, text = _league(monkeypatch, capsys, "--quick")
    assert code != 0 and "stop here" in text and seen == ["quick"]
    code, text = _league(monkeypatch, capsys, "janus", "--quick")
    assert code != 0 and "--quick names the quick grid; got the grid 'janus' too" in text and seen == ["quick"]
    assert "Traceback" not in text


# ---- the Janus rate's interval -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 8, 10])
def test_janus_interval_matches_its_closed_forms_and_tails(n):
    from scipy.stats import binom

    from dreamgen.evaluation.league import janus_interval

    assert janus_interval(0, n)[0] == 0.0 and janus_interval(n, n)[1] == 1.0
    assert janus_interval(0, n)[1] == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-9)  # (1 − p)^n = α/2
    assert janus_interval(n, n)[0] == pytest.approx(0.025 ** (1 / n), abs=1e-9)
    for k in range(1, n):
        lo, hi = janus_interval(k, n)
        assert lo < k / n < hi
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.025, abs=1e-9)  # P(X ≥ k | lo)
        assert binom.cdf(k, n, hi) == pytest.approx(0.025, abs=1e-9)  # P(X ≤ k | hi)
        mirror = janus_interval(n - k, n)
        assert (lo, hi) == pytest.approx((1 - mirror[1], 1 - mirror[0]), abs=1e-9)


@pytest.mark.parametrize("n", [2, 4, 8, 10])
def test_janus_p_value_matches_the_hypergeometric_closed_forms(n):
    from dreamgen.evaluation.league import janus_p_value

    assert janus_p_value([n, n], [0, n]) == pytest.approx(2 / math.comb(2 * n, n))  # only the two corner tables
    assert janus_p_value([0, n], [n, n]) == janus_p_value([n, n], [0, n])
    assert janus_p_value([1, n], [1, n]) == pytest.approx(1.0)
    assert janus_p_value([3, 4], [1, 4]) == pytest.approx(34 / 70)  # the tea-tasting table: (1 + 16 + 16 + 1) / 70


def test_league_rows_count_janus_runs_with_their_interval(tmp_path):
    from dreamgen.evaluation.league import Grid, Method, summarise, write_markdown

    grid = Grid("g", ["a cyan tv"], list(range(4)), [Method("sds"), Method("cam")], [])
    base = {"prompt": "a cyan tv", "status": "done", "silhouette_iou": 0.6, "volumetric_iou": 0.2,
            "mesh_volumetric_iou": 0.2, "chamfer": 0.1, "colour_error": 0.1, "front_feature": 1.0, "rank1": False,
            "genus_right": True, "s_per_step": 0.5, "s_to_glb": 400.0}
    janus = [1.0, 0.75, 0.0, 0.25]  # two runs Janus (> 0.5), two not
    runs = [{**base, "method": "sds", "name": f"sds{s}", "seed": s, "janus": j} for s, j in enumerate(janus)]
    runs += [{**base, "method": "cam", "name": f"cam{s}", "seed": s, "janus": 0.0} for s in range(4)]
    sds, cam = summarise(grid, runs)
    assert sds["janus_runs"] == [2, 4] and sds["janus_rate"] == 0.5 and cam["janus_runs"] == [0, 4]
    assert cam["janus_rate_ci95"][0] == 0 and cam["janus_rate_ci95"][1] == pytest.approx(0.6024, abs=1e-4)
    assert "janus_p_vs_first" not in sds and cam["janus_p_vs_first"] == pytest.approx(12 / 28)  # (6 + 6) / C(8, 2)
    md = write_markdown(grid, [sds, cam], runs, tmp_path / "l.md", None).read_text()
    assert "| 0.50 (2/4; 0.07–0.93) |" in md and "| 0.00 (0/4; 0.00–0.60; p 0.43) |" in md
    assert "| sds1 | 0.60 | 0.20 | 0.20 | 0.100 | 0.100 | no | True | 1.00 | 0.75 |" in md  # no soft score: none shown

    assert "| sds1 | 0.60 | 0.20 | 0.20 | 0.100 | 0.100 | no | True | 1.00 | 0.75 | – |" in md  # nor on-shape
    assert "| 0.50 (2/4; 0.07–0.93) | – |" in md

    runs[0]["front_soft"] = 0.456  # eval.json's per-view soft front scores, averaged by run_record
    for r, (front, janus) in zip(runs[:4], [(1.0, 1.0), (0.25, 0.5), (0.75, 0.0), (None, None)]):
        r["front_on_shape"], r["janus_on_shape"] = front, janus  # the last evaluated before these scores
    sds, cam = summarise(grid, runs)
    assert sds["front_on_shape_runs"] == [2, 3] and sds["janus_on_shape_runs"] == [1, 3]
    md = write_markdown(grid, [sds, cam], runs, tmp_path / "l.md", None).read_text()
    assert "| sds0 | 0.60 | 0.20 | 0.20 | 0.100 | 0.100 | no | True | 1.00 (0.46) | 1.00 | 1.00, 1.00 |" in md
    assert "| sds1 | 0.60 | 0.20 | 0.20 | 0.100 | 0.100 | no | True | 1.00 | 0.75 | 0.25, 0.50 |" in md
    assert "| sds3 | 0.60 | 0.20 | 0.20 | 0.100 | 0.100 | no | True | 1.00 | 0.25 | – |" in md
    assert "| 0.50 (2/4; 0.07–0.93) | 2/3, 1/3 |" in md and "| 0.00 (0/4; 0.00–0.60; p 0.43) | – |" in md
