"""``dreamgen league``: every method of a grid × prompts of the procedural world × seeds, run, scored against the
exact objects and ranked — the project's benchmark for every change that touches the optimisation.

A grid (YAML; ``dreamgen/configs/league/<name>.yaml`` by name, or a file) lists ``prompts`` (world captions),
``seeds``, ``overrides`` applied to every run, and ``methods``: named variants, each a ``loss``, a ``guidance``
and/or ``overrides``. Runs go through the batch machinery (resumable: a rerun skips what is done; local or Ray
executor), each run is evaluated right after it finishes (``eval.json`` in its folder, NeRF and exported mesh),
and the league writes ``league.json``, ``league.md`` (one row per method: means over its runs, the spread over seeds,
seconds per step and to the GLB) and ``contact_sheet.png`` (one row per method, one turntable frame per prompt).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw
from scipy import stats

from dreamgen.batch.inputs import BatchItem
from dreamgen.config import configs_root
from dreamgen.errors import ConfigError
from dreamgen.runs import atomic_write_text, save_png, slugify
from dreamgen.world.captions import parse_caption

log = logging.getLogger("dreamgen")
METHOD_FIELDS = ("loss", "guidance", "overrides")


@dataclass
class Method:
    name: str
    loss: str | None = None
    guidance: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class Grid:
    name: str
    prompts: list[str]
    seeds: list[int]
    methods: list[Method]
    overrides: list[str] = field(default_factory=list)

    def items(self) -> list[BatchItem]:
        """One batch item per method × prompt × seed, named ``method__prompt-slug__sSEED``."""
        out = []
        for m in self.methods:
            extra = ([f"guidance.name={m.guidance}"] if m.guidance else []) + list(m.overrides)
            for p in self.prompts:
                for s in self.seeds:
                    out.append(BatchItem(name=f"{m.name}__{slugify(p)}__s{s}", prompt=p, line=len(out) + 1,
                                         loss=m.loss, seed=s, overrides=tuple([*self.overrides, *extra])))
        return out


def grid_names() -> list[str]:
    return sorted(p.name[:-5] for p in (configs_root() / "league").iterdir() if p.name.endswith(".yaml"))


def load_grid(spec: str) -> Grid:
    """A grid by name (``quick``, ``full``, ``janus``, ...) or a YAML file; every problem is a one-line error."""
    path = Path(spec)
    if path.is_file():
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        res = configs_root() / "league" / f"{spec}.yaml"
        if not res.is_file():
            raise ConfigError(f"no league grid file or name {spec!r}; grids: {', '.join(grid_names())}")
        text, name = res.read_text(encoding="utf-8"), spec
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse league grid {spec}: {str(e).splitlines()[0]}") from None
    unknown = sorted(set(raw) - {"prompts", "seeds", "methods", "overrides"})
    if unknown:
        raise ConfigError(f"league grid {spec}: unknown key {unknown[0]!r}; valid: prompts, seeds, methods, overrides")
    prompts, seeds, methods = raw.get("prompts") or [], raw.get("seeds") or [0], raw.get("methods") or {"sds": {}}
    if not prompts:
        raise ConfigError(f"league grid {spec}: no prompts")
    for p in prompts:
        parse_caption(str(p))  # only world captions can be scored
    parsed = []
    for mname, mdef in methods.items():
        mdef = mdef or {}
        bad = sorted(set(mdef) - set(METHOD_FIELDS))
        if bad:
            raise ConfigError(f"league grid {spec}: method {mname!r} has unknown field {bad[0]!r}; valid: "
                              f"{', '.join(METHOD_FIELDS)}")
        parsed.append(Method(str(mname), mdef.get("loss"), mdef.get("guidance"), list(mdef.get("overrides") or [])))
    return Grid(name, [str(p) for p in prompts], [int(s) for s in seeds], parsed, list(raw.get("overrides") or []))


# ---- scoring -------------------------------------------------------------------------------------------------------
def run_record(run_dir: Path, seconds: float | None) -> dict[str, Any] | None:
    """A finished run's league record (from eval.json and metrics.jsonl), evaluating it first if needed."""
    from dreamgen.evaluation.run import evaluate_run
    from dreamgen.runs import MetricsLog

    ev_path = run_dir / "eval.json"
    fresh = ev_path.exists() and ev_path.stat().st_mtime >= max(
        (p.stat().st_mtime for p in (run_dir / "mesh.glb", run_dir / "checkpoints" / "last.pt") if p.exists()),
        default=0)
    ev = json.loads(ev_path.read_text()) if fresh else None
    if ev is None or "front_feature_on_shape" not in ev:  # not scored yet, or by a dreamgen before that score
        ev = evaluate_run(run_dir)
    recs = MetricsLog(run_dir / "metrics.jsonl").read()
    step_s = [sum(v for k, v in r.items() if k.startswith("time_")) for r in recs[1:]]
    mesh = ev.get("mesh") or {}
    return {
        "silhouette_iou": ev["silhouette_iou"], "volumetric_iou": ev["volumetric_iou"],
        "colour_error": ev["colour_error"], "rank1": bool(ev["rank1"]), "janus": ev.get("janus"),
        "front_feature": ev.get("front_feature"), "front_soft": _mean(ev.get("front_feature_soft") or []),
        "front_on_shape": ev.get("front_feature_on_shape"), "janus_on_shape": ev.get("janus_on_shape"),
        "mesh_volumetric_iou": mesh.get("mesh_volumetric_iou"),
        "chamfer": mesh.get("chamfer"), "genus_right": mesh.get("genus_right"),
        "s_per_step": statistics.fmean(step_s) if step_s else None, "s_to_glb": seconds,
    }


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _seed_spread(runs: list[dict], key: str) -> float | None:
    """Mean over prompts of the standard deviation over seeds of ``key``."""
    by_prompt: dict[str, list[float]] = {}
    for r in runs:
        if r[key] is not None:
            by_prompt.setdefault(r["prompt"], []).append(float(r[key]))
    spreads = [statistics.pstdev(v) for v in by_prompt.values() if len(v) > 1]
    return statistics.fmean(spreads) if spreads else None


def janus_interval(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper–Pearson) 95 % interval of a Janus rate seen in k of n runs."""
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def janus_p_value(a: list[int], b: list[int]) -> float:
    """Fisher's exact two-sided p of two Janus counts [k, n]: how often rates this different arise by chance when
    both methods share one rate."""
    return float(stats.fisher_exact([[a[0], a[1] - a[0]], [b[0], b[1] - b[0]]]).pvalue)


def summarise(grid: Grid, runs: list[dict]) -> list[dict[str, Any]]:
    """One row per method: means over its finished runs, counts, the spread over seeds."""
    rows = []
    for m in grid.methods:
        mine = [r for r in runs if r["method"] == m.name]
        done = [r for r in mine if r.get("status") == "done"]
        row: dict[str, Any] = {"method": m.name, "runs": len(mine), "done": len(done)}
        for key in ("silhouette_iou", "volumetric_iou", "mesh_volumetric_iou", "chamfer", "colour_error",
                    "front_feature", "janus", "s_per_step", "s_to_glb"):
            row[key] = _mean([r[key] for r in done])
        row["rank1"] = sum(bool(r["rank1"]) for r in done)
        row["genus_right"] = sum(bool(r["genus_right"]) for r in done)
        janus = [r["janus"] > 0.5 for r in done if r["janus"] is not None]
        row["janus_rate"] = _mean(janus)
        row["janus_runs"] = [sum(janus), len(janus)]
        row["janus_rate_ci95"] = list(janus_interval(sum(janus), len(janus))) if janus else None
        row["front_rate"] = _mean([r["front_feature"] >= 0.5 for r in done if r["front_feature"] is not None])
        # as front_rate and janus_rate count; absent from runs evaluated before these scores existed
        front, janus = ([r[k] for r in done if r.get(k) is not None] for k in ("front_on_shape", "janus_on_shape"))
        row["front_on_shape_runs"] = [sum(v >= 0.5 for v in front), len(front)]
        row["janus_on_shape_runs"] = [sum(v > 0.5 for v in janus), len(janus)]
        row["silhouette_iou_seed_std"] = _seed_spread(done, "silhouette_iou")
        rows.append(row)
    for row in rows[1:]:  # each method's Janus count against the grid's first (its baseline)
        usable = row["janus_runs"][1] and rows[0]["janus_runs"][1]
        row["janus_p_vs_first"] = janus_p_value(row["janus_runs"], rows[0]["janus_runs"]) if usable else None
    return rows


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _janus_cell(row: dict) -> str:
    """'0.25 (2/8; 0.03–0.65; p 0.0014)': the rate, the count, its 95 % Clopper–Pearson interval and (below the
    first row) Fisher's p against the first row."""
    if row["janus_rate_ci95"] is None:
        return "–"
    (k, n), (lo, hi) = row["janus_runs"], row["janus_rate_ci95"]
    p = row.get("janus_p_vs_first")
    return f"{row['janus_rate']:.2f} ({k}/{n}; {lo:.2f}–{hi:.2f}" + ("" if p is None else f"; p {p:.2g}") + ")"


def _front_cell(run: dict) -> str:
    """The front-feature score, with the mean of its views' soft scores (≥ 0.5: closer to the true front than to
    the faceless one) where eval.json has them: how near a run scored 0 came to drawing the feature."""
    soft = run.get("front_soft")
    return _f(run["front_feature"]) + ("" if soft is None else f" ({soft:.2f})")


def _on_shape_run_cell(run: dict) -> str:
    front, janus = run.get("front_on_shape"), run.get("janus_on_shape")
    return "–" if front is None else f"{front:.2f}, {janus:.2f}"


def _on_shape_cell(row: dict) -> str:
    """'2/10, 0/10': the runs that show their front feature (score ≥ 0.5), and that are Janus (> 0.5), judged on
    their own surface."""
    counts = [row[f"{key}_runs"] for key in ("front_on_shape", "janus_on_shape")]
    return "–" if not counts[0][1] else ", ".join(f"{k}/{n}" for k, n in counts)


def write_markdown(grid: Grid, rows: list[dict], runs: list[dict], path: Path, sheet: Path | None) -> Path:
    head = ["method", "done", "sil. IoU (± seeds)", "vol. IoU", "mesh vol. IoU", "Chamfer", "colour err.",
            "rank-1", "genus right", "front feature (rate ≥ 0.5)", "Janus rate (runs; 95 % CI; p vs row 1)",
            "on its own shape: front, Janus (runs)", "s/step", "s to GLB"]
    lines = [f"# dreamgen league: {grid.name}", "",
             f"{len(grid.methods)} method(s) × {len(grid.prompts)} prompt(s) × {len(grid.seeds)} seed(s); "
             f"overrides for every run: `{' '.join(grid.overrides) or 'none'}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r["done"]
        lines.append(" | ".join([
            f"| {r['method']}", f"{n}/{r['runs']}",
            f"{_f(r['silhouette_iou'])} (± {_f(r['silhouette_iou_seed_std'])})", _f(r["volumetric_iou"]),
            _f(r["mesh_volumetric_iou"]), _f(r["chamfer"], 3), _f(r["colour_error"], 3), f"{r['rank1']}/{n}",
            f"{r['genus_right']}/{n}", f"{_f(r['front_feature'])} ({_f(r['front_rate'])})", _janus_cell(r),
            _on_shape_cell(r), _f(r["s_per_step"], 3),
            _f(r["s_to_glb"], 0)]) + " |")
    lines += ["", "Per run:", "", "| run | sil. IoU | vol. IoU | mesh vol. IoU | Chamfer | colour err. | rank-1 | "
              "genus right | front (soft) | Janus | on its own shape: front, Janus |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("status") != "done":
            why = f"{r['status']}: {r['error']}" if r.get("error") else r.get("status")
            lines.append(f"| {r['name']} | {why} ||||||||||")
            continue
        lines.append(f"| {r['name']} | {_f(r['silhouette_iou'])} | {_f(r['volumetric_iou'])} | "
                     f"{_f(r['mesh_volumetric_iou'])} | {_f(r['chamfer'], 3)} | {_f(r['colour_error'], 3)} | "
                     f"{'yes' if r['rank1'] else 'no'} | {r['genus_right']} | {_front_cell(r)} | "
                     f"{_f(r['janus'])} | {_on_shape_run_cell(r)} |")
    if sheet is not None:
        lines += ["", f"![contact sheet]({sheet.name})"]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_sheet(grid: Grid, runs: list[dict], out_dir: Path, cell: int = 128) -> Path | None:
    """One row per method, one column per prompt (its first seed): the first turntable frame of the exported mesh
    (the front, as a glTF viewer shows it), else the final preview's first view."""
    first = {(r["method"], r["prompt"]): r for r in sorted(runs, key=lambda r: r["seed"], reverse=True)
             if r.get("status") == "done"}
    if not first:
        return None
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = max(110, 12 + max(int(probe.textlength(m.name)) for m in grid.methods))  # whole method names
    sheet = Image.new("RGB", (label + cell * len(grid.prompts), 18 + cell * len(grid.methods)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, p in enumerate(grid.prompts):
        draw.text((label + j * cell + 4, 3), p[:22], fill="black")
    for i, m in enumerate(grid.methods):
        draw.text((4, 18 + i * cell + cell // 2), m.name, fill="black")
        for j, p in enumerate(grid.prompts):
            r = first.get((m.name, p))
            if r is None:
                continue
            run = out_dir / r["name"]
            if (run / "turntable.gif").exists():
                img = Image.open(run / "turntable.gif").convert("RGB")
            elif (run / "previews" / "final.png").exists():
                full = Image.open(run / "previews" / "final.png").convert("RGB")
                img = full.crop((0, 0, full.height // 3, full.height // 3))
            else:
                continue
            sheet.paste(img.resize((cell, cell)), (label + j * cell, 18 + i * cell))
    path = out_dir / "contact_sheet.png"
    save_png(path, np.asarray(sheet))
    return path


def collect(grid: Grid, out_dir: Path, manifest) -> list[dict]:
    """Every item's outcome, scored when it finished (an item the manifest lacks — added to the grid since — is
    queued)."""
    runs = []
    for it in grid.items():
        rec = manifest.records.get(it.name)
        method, _, _ = it.name.partition("__")
        row = {"name": it.name, "method": method, "prompt": it.prompt, "seed": it.seed,
               "status": rec.status if rec else "queued", "error": rec.error if rec else None}
        if rec is not None and rec.status == "done":
            row.update(run_record(out_dir / rec.run_dir, rec.seconds))
        runs.append(row)
    return runs


def write_league(grid: Grid, out_dir: Path, manifest) -> dict[str, Any]:
    runs = collect(grid, out_dir, manifest)
    rows = summarise(grid, runs)
    sheet = write_sheet(grid, runs, out_dir)
    atomic_write_text(out_dir / "league.json", json.dumps({"grid": grid.name, "methods": rows, "runs": runs},
                                                          indent=2))
    md = write_markdown(grid, rows, runs, out_dir / "league.md", sheet)
    return {"rows": rows, "runs": runs, "markdown": md, "sheet": sheet}
