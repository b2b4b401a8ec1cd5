"""The ``dreamgen`` command line: run, edit, export, eval, probe, batch, config show, losses, doctor, lab2d.

One grammar: ``run`` and ``batch`` take the same job flags (``--guidance --loss --config --steps --seed --out``) and
trailing ``key=value`` overrides. Bad usage exits 2 with the usage line; bad input (config, prompt, files) prints one
``error:`` line and exits 2; a runtime failure (NaN, full disk) exits 1; SIGINT/SIGTERM save a checkpoint at a step
boundary, print the command that resumes, and exit 130/143. ``DREAMGEN_DEBUG=1`` shows full tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from dreamgen.batch.cli import batch
from dreamgen.config import job_flags
from dreamgen.errors import ConfigError, DreamgenError, Interrupted
from dreamgen.gallery import view
from dreamgen.interrupts import InterruptPolicy

if TYPE_CHECKING:
    from dreamgen.batch.manifest import Manifest
    from dreamgen.evaluation.league import Grid

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Text-to-3D by score distillation.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configurations.")
app.add_typer(config_app, name="config")
log = logging.getLogger("dreamgen")

# The job flags `run`, `batch` and `config show` share.
LOSS = typer.Option(None, "--loss", help="Distillation loss (see `dreamgen losses`).")
CONFIG = typer.Option(None, "--config", help="YAML config file, or a preset name (see `dreamgen config presets`).")
GUIDANCE = typer.Option(None, "--guidance", help="auto | shapes | shapes64 | shapes-cam | stable-diffusion | a "
                                                     "pipeline folder or hub id.")
STEPS = typer.Option(None, "--steps", min=1, help="Optimisation steps of the first stage (trainer.steps).")
SEED = typer.Option(None, "--seed", help="Random seed: a seeded CPU run is deterministic.")


def _refuse(mode: str, **given: object) -> None:
    bad = [name for name, value in given.items() if value is not None]
    if bad:
        raise DreamgenError(f"--{bad[0]} cannot be used with {mode}: the run's "
                            f"{'settings are' if bad[0] != 'out' else 'folder is'} fixed by it "
                            "(key=value overrides that can change apply)")


@app.command()
def run(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None, help="Text prompt, e.g. \"a red cube\"."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value, e.g. trainer.steps=500"),
    loss: Optional[str] = LOSS,
    config: Optional[str] = CONFIG,
    guidance: Optional[str] = GUIDANCE,
    steps: Optional[int] = STEPS,
    seed: Optional[int] = SEED,
    out: Optional[Path] = typer.Option(None, "--out", help="Parent folder of the run folder (default outputs/)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder (--steps and "
                                                                 "key=value overrides apply from its checkpoint on)."),
    from_run: Optional[Path] = typer.Option(None, "--from",
                                            help="Start the DMTet fine stage from this finished coarse run."),
) -> None:
    """Optimise a 3-D object for PROMPT and export a textured mesh."""
    from dreamgen.config import compose_new
    from dreamgen.session import Session

    overrides = list(overrides or [])
    if resume is not None or from_run is not None:
        mode = "--resume" if resume is not None else "--from"
        if prompt is not None:
            if "=" not in prompt:
                raise DreamgenError(f"with {mode} the prompt is the run's own; positional arguments are key=value "
                                    f"overrides, got {prompt!r}")
            overrides.insert(0, prompt)
        if resume is not None:
            _refuse(mode, loss=loss, config=config, guidance=guidance, seed=seed, out=out, **{"from": from_run})
            session = Session.resume(resume, overrides, steps=steps)
        else:
            _refuse(mode, loss=loss, config=config, guidance=guidance, seed=seed, steps=steps)
            session = Session.from_coarse(from_run, overrides, out=out)
    else:
        if prompt is None:
            raise DreamgenError("missing PROMPT, e.g. dreamgen run \"a red cube\" (or --resume RUN_DIR)")
        composed = compose_new(config, overrides, prompt=prompt, out_dir=str(out) if out is not None else None,
                               **job_flags(loss, guidance, steps, seed))
        if composed.object_settings:
            log.info("the embedded prior's settings for this object: %s", composed.object_settings)
        session = Session.new(composed.cfg)
    _finish(session, ctx.obj)


def _finish(session, interrupts: InterruptPolicy | None) -> None:
    result = session.run(interrupts)
    log.info("done in %.1f s (optimisation %.1f s): %s", result["seconds"], result["fit_seconds"],
             ", ".join(str(p) for p in result["paths"].values()))


@app.command()
def edit(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="The run to edit."),
    prompt: str = typer.Argument(..., help="The new prompt."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value."),
    loss: str = typer.Option("dds", "--loss", help="A loss that takes a source (dds)."),
    steps: Optional[int] = STEPS,
    out: Optional[Path] = typer.Option(None, "--out"),
) -> None:
    """Edit an existing run toward a new prompt (Delta Denoising Score); writes a new run folder."""
    from dreamgen.session import Session

    _finish(Session.edit(run_dir, prompt, loss, list(overrides or []), steps, out), ctx.obj)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `dreamgen run`."),
    format: list[str] = typer.Option(["glb"], "--format", help="glb and/or obj (repeat the option)."),
) -> None:
    """Extract the mesh of a run's last checkpoint again (e.g. as OBJ, or with other export.* settings)."""
    from dreamgen.export import export_mesh
    from dreamgen.session import asset_metadata, load_scene

    bad = [f for f in format if f not in ("glb", "obj")]
    if bad:
        raise DreamgenError(f"unknown format {bad[0]!r}; valid formats: glb, obj")
    cfg, scene, step = load_scene(run_dir)
    cfg.export.formats = list(format)
    paths = export_mesh(scene.particles[0], cfg.export, run_dir, metadata=asset_metadata(run_dir))
    log.info("exported step %d: %s", step, ", ".join(str(p) for p in paths.values()))


@config_app.command("show")
def config_show(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value."),
    config: Optional[str] = CONFIG,
    loss: Optional[str] = LOSS,
    guidance: Optional[str] = GUIDANCE,
    steps: Optional[int] = STEPS,
    seed: Optional[int] = SEED,
    explain: bool = typer.Option(False, "--explain", help="Show beside each value the layer that set it."),
) -> None:
    """Print the fully resolved configuration a `dreamgen run` with the same arguments would use."""
    from dreamgen.config import compose_new, explain as explain_config, to_yaml

    composed = compose_new(config, list(overrides or []), **job_flags(loss, guidance, steps, seed))
    typer.echo(explain_config(composed) if explain else to_yaml(composed.cfg), nl=False)


@config_app.command("presets")
def config_presets() -> None:
    """List the presets --config accepts by name, with the first line of each."""
    from dreamgen.config import configs_root, preset_names

    for name in preset_names():
        text = (configs_root() / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
        first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
        typer.echo(f"{name:<18} {first}")


@app.command()
def doctor(
    config: Optional[str] = CONFIG,
    loss: Optional[str] = LOSS,
    guidance: Optional[str] = GUIDANCE,
) -> None:
    """What this machine will use: versions, GPU, backends, Stable Diffusion weights, memory of a recipe."""
    from dreamgen.doctor import format_report, report

    typer.echo(format_report(report(config, loss, guidance)))


@app.command()
def losses() -> None:
    """List every distillation loss: summary, paper, extra state, denoiser evaluations per step."""
    from rich.console import Console
    from rich.table import Table

    from dreamgen import registry

    table = Table(title="distillation losses (--loss NAME)")
    for col in ("name", "summary", "paper", "extra state", "NFE/step"):
        table.add_column(col, overflow="fold")
    for name, e in sorted(registry.entries("loss").items()):
        table.add_row(name, e.summary, str(e.meta.get("paper", "")), str(e.meta.get("state", "")),
                      str(e.meta.get("nfe", "")))
    Console(width=160).print(table)


@app.command("eval")
def eval_run(
    run_dir: Path = typer.Argument(..., help="A run whose prompt is a world caption, e.g. \"a red cube\"."),
    views: int = typer.Option(8, "--views", min=1, help="Orbit views for the image metrics."),
    resolution: int = typer.Option(64, "--resolution", min=8, help="Side of the evaluation renders in pixels."),
) -> None:
    """Compare a run with the true object of the procedural world (writes RUN_DIR/eval.json)."""
    from dreamgen.evaluation import evaluate_run

    m = evaluate_run(run_dir, views, resolution)
    front = "" if m["front_feature"] is None else f", front feature {m['front_feature']:.2f}, Janus {m['janus']:.2f}"
    if m["front_feature_on_shape"] is not None:
        front += (f" (on its own shape: front {m['front_feature_on_shape']:.2f}, "
                  f"Janus {m['janus_on_shape']:.2f})")
    mesh = m["mesh"]
    glb = "" if mesh is None else (f"; mesh.glb: volumetric IoU {mesh['mesh_volumetric_iou']:.3f}, Chamfer "
                                   f"{mesh['chamfer']:.3f}, genus {mesh['genus']} (true {mesh['true_genus']}), "
                                   f"{mesh['pieces']} piece{'s' * (mesh['pieces'] != 1)}")
    typer.echo(f"{m['prompt']}: silhouette IoU {m['silhouette_iou']:.3f}, volumetric IoU {m['volumetric_iou']:.3f}, "
               f"colour error {m['colour_error']:.3f}{front}, object rank-1 {'yes' if m['rank1'] else 'NO'} "
               f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(m['shape_scores'].items(), key=lambda kv: -kv[1]))})"
               f"{glb}")


@app.command()
def probe(
    run_dir: Path = typer.Argument(..., help="A run folder (its newest checkpoint is probed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the sheet (default RUN_DIR/probe.png)."),
    azimuth: list[float] = typer.Option([0.0, 45.0, 90.0, 180.0], "--azimuth",
                                        help="View azimuths in degrees from the front (repeat the option)."),
    noise: list[float] = typer.Option([0.2, 0.35, 0.5, 0.7], "--t",
                                      help="Noise levels as fractions of the guidance's timesteps (repeat)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale", help="CFG scale (default: the run's)."),
    elevation: Optional[float] = typer.Option(None, "--elevation",
                                              help="Camera elevation in degrees (default: the run's eval elevation)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
) -> None:
    """Show what the guidance asks of a run: its renders and the guided one-step denoised estimates of them."""
    from dreamgen.evaluation.probe import probe_run, write_probe

    result = probe_run(run_dir, azimuth, noise, guidance_scale, elevation, seed)
    path = write_probe(result, out or Path(run_dir) / "probe.png")
    pull = result.pull
    typer.echo(f"{path}: mean |x0 - render| per t (rows) and azimuth (columns)")
    for level, row in zip(result.noise_levels, pull.tolist()):
        typer.echo(f"  t = {level:<5g} " + "  ".join(f"{v:.3f}" for v in row))


@app.command()
def lab2d(
    loss: str = typer.Option(..., "--loss", help="A registered loss, or 'all' for the docs table."),
    setting: str = typer.Option("particles", "--setting", help="particles | camera"),
    target: str = typer.Option("gaussian", "--target", help="gaussian | mixture"),
    steps: int = typer.Option(3000, "--steps", min=1),
    lr: float = typer.Option(1e-2, "--lr", min=0.0),
    seed: int = typer.Option(0, "--seed"),
    n_particles: int = typer.Option(256, "--n-particles", min=2),
    lambda_entropy: Optional[float] = typer.Option(None, "--lambda-entropy", min=0.0, max=1.0, help="ESD's λ."),
    score: str = typer.Option("exact", "--score", help="VSD-family particle score: exact | mlp"),
    guidance_scale: float = typer.Option(1.0, "--guidance-scale", min=0.0),
    out: Path = typer.Option(Path("outputs/lab2d"), "--out"),
) -> None:
    """Run a loss in the 2-D exact-score lab: fitted spread vs the target, and a scatter plot."""
    from dreamgen import lab2d as lab

    if loss == "all":
        rows = lab.main_table(steps=steps, lr=lr, seed=seed, n_particles=n_particles, guidance_scale=guidance_scale,
                              progress=lambda r: typer.echo(lab.format_result(r)))
        typer.echo(lab.write_report(rows, out / "losses.md", out / "lab2d"))
        return
    overrides = {} if lambda_entropy is None else {"lambda_entropy": lambda_entropy}
    result = lab.run_lab(loss, setting, target, steps, lr, seed, n_particles, overrides, guidance_scale, score)
    typer.echo(lab.format_result(result))
    typer.echo(lab.save_scatter(result, out / lab.plot_name(result)))


app.command()(batch)


@app.command()
def league(
    ctx: typer.Context,
    grid: str = typer.Argument("quick", help="A grid name (quick, full, janus, ...: dreamgen/configs/league/) or a "
                                             "YAML file of prompts, seeds, methods, overrides."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides for every run."),
    out: Optional[Path] = typer.Option(None, "--out", help="League folder (default outputs/league-<grid>)."),
    doc: Optional[Path] = typer.Option(None, "--doc", help="Also write the table here (e.g. docs/league.md), with "
                                                           "its contact sheet beside it."),
    executor: str = typer.Option("local", "--executor", help="local | processes (--workers at once; on a GPU "
                                                             "machine they share the GPU) | ray (one worker per CPU "
                                                             "core; with a GPU, --num-gpus 0.0625 shares it 16 ways)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="processes: how many runs at once (default: one "
                                                                  "per CPU core)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address"),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="ray: GPUs per run"),
    quick: bool = typer.Option(False, "--quick", help="The quick grid (the default one; the same as naming it)."),
    table_only: bool = typer.Option(False, "--table-only", help="Write the table of the runs finished so far in "
                                                                "--out; run nothing."),
) -> None:
    """Run a grid of methods × world prompts × seeds, score every run against the exact objects, rank the methods
    (league.md, league.json, contact_sheet.png). Resumable: a rerun skips finished runs; an interrupted league
    writes the table of what finished before it stops."""
    import shlex

    from dreamgen.batch.manifest import Manifest
    from dreamgen.batch.run import BatchOptions, run_batch
    from dreamgen.evaluation.league import load_grid

    if quick and grid != "quick":
        raise ConfigError(f"--quick names the quick grid; got the grid {grid!r} too: give one")
    spec = load_grid(grid)
    out_dir = out or Path("outputs") / f"league-{spec.name}"
    if table_only:
        manifest = Manifest.load(out_dir)
        if manifest is None:
            raise DreamgenError(f"{out_dir} holds no league (no manifest.json): nothing to tabulate")
        if not _any_done(manifest):
            raise DreamgenError(f"no run of {out_dir} has finished: nothing to tabulate")
        _write_league_table(spec, out_dir, manifest, doc)
        return
    opts = BatchOptions(overrides=list(overrides or []), executor=executor, workers=workers,
                        ray_address=ray_address, num_gpus=num_gpus, evaluate=True, resume_command=shlex.join(["dreamgen", *sys.argv[1:]]))
    try:
        done = run_batch(spec.items(), f"league grid {spec.name}", out_dir, opts, ctx.obj)
    except Interrupted:
        manifest = Manifest.load(out_dir)
        if manifest is not None and _any_done(manifest):  # a stopped league still reports what it measured
            _write_league_table(spec, out_dir, manifest, doc)
        elif doc is not None:  # an empty table would replace a finished league's doc
            typer.echo(f"no run finished: {doc} left as it was", err=True)
        raise
    _write_league_table(spec, out_dir, done["manifest"], doc)


def _any_done(manifest: Manifest) -> bool:
    return any(rec.status == "done" for rec in manifest.records.values())


def _write_league_table(spec: Grid, out_dir: Path, manifest: Manifest, doc: Optional[Path]) -> None:
    """league.md/json and the contact sheet in out_dir (and the table at ``doc``), one line per method on stdout."""
    import shutil

    from dreamgen.evaluation.league import write_league
    from dreamgen.runs import atomic_write_text

    result = write_league(spec, out_dir, manifest)
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        text = result["markdown"].read_text()
        if result["sheet"] is not None:
            sheet = doc.with_name(f"{doc.stem}_contact_sheet.png")
            shutil.copyfile(result["sheet"], sheet)
            text = text.replace(f"]({result['sheet'].name})", f"]({sheet.name})")
        atomic_write_text(doc, text)
    for row in result["rows"]:
        typer.echo(f"{row['method']:<16} sil. IoU {row['silhouette_iou'] or 0:.3f}  vol. IoU "
                   f"{row['volumetric_iou'] or 0:.3f}  rank-1 {row['rank1']}/{row['done']}")
    typer.echo(f"{result['markdown']}" + (f", {doc}" if doc else ""))


app.command()(view)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    debug = bool(os.environ.get("DREAMGEN_DEBUG"))
    interrupts = InterruptPolicy()  # commands pass it (ctx.obj) to the loops that defer signals
    try:
        with interrupts:
            app(prog_name="dreamgen", standalone_mode=False, obj=interrupts)
    except DreamgenError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a signal outside a training loop: that work was abandoned, nothing half-written
        signum = interrupts.signum or 2
        typer.echo("interrupted; nothing was left half-written", err=True)
        sys.exit(128 + signum)
    except Exception as e:
        usage = _usage_error(e)
        if usage is not None:
            sys.exit(usage)
        if debug:
            raise
        typer.echo(f"error: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]} "
                   "(set DREAMGEN_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


def _usage_error(e: Exception) -> int | None:
    """Click's usage errors (typer bundles its own click): print them as click does, return the exit code."""
    show = getattr(e, "show", None)
    code = getattr(e, "exit_code", None)
    if callable(show) and isinstance(code, int) and type(e).__module__.endswith("click.exceptions"):
        show()
        return code
    if type(e).__name__ == "Abort":
        return 130
    return None
