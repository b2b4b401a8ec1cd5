"""The ``dreamgen`` command line: run, edit, export, eval, batch, config show, losses, lab2d.

User errors (bad config key, unknown loss, missing weights, empty prompt, NaN) print one line and exit 2; a run that
is interrupted keeps its last checkpoint and says how to resume. ``DREAMGEN_DEBUG=1`` shows full tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from dreamgen.batch.cli import batch
from dreamgen.errors import DreamgenError
from dreamgen.gallery import view

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Text-to-3D by score distillation.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configurations.")
app.add_typer(config_app, name="config")
log = logging.getLogger("dreamgen")


def _guidance_flags(guidance: Optional[str]) -> dict:
    """``--guidance`` takes a registered name, or a diffusers pipeline folder / hub id (→ stable-diffusion)."""
    if guidance is None:
        return {}
    from dreamgen import registry

    if guidance in registry.entries("guidance"):
        return {"guidance.name": guidance}
    return {"guidance.name": "stable-diffusion", "guidance.pretrained": guidance}


@app.command()
def run(
    prompt: Optional[str] = typer.Argument(None, help="Text prompt, e.g. \"a red cube\"."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value, e.g. trainer.steps=500"),
    loss: Optional[str] = typer.Option(None, "--loss", help="Distillation loss (see `dreamgen losses`)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file or preset name in configs/."),
    guidance: Optional[str] = typer.Option(None, "--guidance",
                                           help="auto | shapes | stable-diffusion | a pipeline folder or hub id."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps (trainer.steps)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Parent folder of the run folder (default outputs/)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    from_run: Optional[Path] = typer.Option(None, "--from",
                                            help="Start the DMTet fine stage from this finished coarse run."),
) -> None:
    """Optimise a 3-D object for PROMPT and export a mesh."""
    from dreamgen.config import compose, load_config, load_yaml, parse_dotlist
    from dreamgen.runs import new_run_dir
    from dreamgen.train import Trainer

    overrides = list(overrides or [])
    t0 = time.perf_counter()
    if resume is not None:
        if prompt is not None:
            overrides.insert(0, prompt)  # with --resume every positional argument is an override
        cfg_file = resume / "config.yaml"
        if not cfg_file.exists():
            raise DreamgenError(f"cannot resume: {resume} is not a run folder (no config.yaml)")
        cfg = compose(load_yaml(cfg_file), parse_dotlist(overrides) if overrides else None)
        trainer = Trainer(cfg)
        trainer.attach(resume)
        trainer.load_checkpoint()
        log.info("resuming %s at step %d/%d", resume, trainer.step, cfg.trainer.steps)
        run_dir = resume
    elif from_run is not None:
        from dreamgen.train import load_scene

        if prompt is not None:
            overrides.insert(0, prompt)
        src_cfg, src_scene, src_step = load_scene(from_run)
        if src_scene.stage != "nerf":
            raise DreamgenError(f"--from needs a coarse (NeRF) run; {from_run} is already in its fine stage")
        base = load_yaml(from_run / "config.yaml")
        cfg = compose(base, {"stages": ["nerf", "dmtet"], "trainer": {"steps": src_step}},
                      parse_dotlist(overrides) if overrides else None)
        trainer = Trainer(cfg)
        trainer.scene.load_state_dict(src_scene.state_dict())
        trainer.step = cfg.trainer.steps  # the coarse stage is done: fit() starts with the hand-off
        run_dir = new_run_dir(cfg.out_dir, cfg.prompt)
        trainer.attach(run_dir)
        log.info("fine stage of %s in %s", from_run, run_dir)
    else:
        if prompt is None:
            raise DreamgenError("missing PROMPT, e.g. dreamgen run \"a red cube\" (or --resume RUN_DIR)")
        flags = {"prompt": prompt, "loss.name": loss, "trainer.steps": steps, "seed": seed,
                 "out_dir": str(out) if out is not None else None, **_guidance_flags(guidance)}
        cfg = load_config(config, overrides, **flags)
        if not cfg.prompt.strip():
            raise DreamgenError("the prompt is empty; give a text such as \"a red cube\"")
        trainer = Trainer(cfg)
        run_dir = new_run_dir(cfg.out_dir, cfg.prompt)
        trainer.attach(run_dir)
        log.info("run folder: %s", run_dir)
    _fit_and_export(trainer, run_dir, t0)


def _fit_and_export(trainer, run_dir: Path, t0: float) -> None:
    try:
        trainer.fit()
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        raise DreamgenError(f"interrupted at step {trainer.step}; continue with: dreamgen run --resume {run_dir}")
    t_opt = time.perf_counter() - t0
    paths = _export(trainer.geometry, trainer.cfg, run_dir)
    log.info("done in %.1f s (optimisation %.1f s): %s", time.perf_counter() - t0, t_opt,
             ", ".join(str(p) for p in paths.values()))


@app.command()
def edit(
    run_dir: Path = typer.Argument(..., help="The run to edit."),
    prompt: str = typer.Argument(..., help="The new prompt."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value."),
    loss: str = typer.Option("dds", "--loss", help="A loss that takes a source (dds)."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    out: Optional[Path] = typer.Option(None, "--out"),
) -> None:
    """Edit an existing run toward a new prompt (Delta Denoising Score); writes a new run folder."""
    from dreamgen.config import compose, load_yaml, parse_dotlist
    from dreamgen.runs import new_run_dir
    from dreamgen.train import Trainer

    t0 = time.perf_counter()
    if not (run_dir / "config.yaml").exists():
        raise DreamgenError(f"{run_dir} is not a run folder (no config.yaml)")
    base = load_yaml(run_dir / "config.yaml")
    source_prompt = base.get("prompt", "")
    flags = {"prompt": prompt, "loss": {"name": loss}, "trainer": {"steps": steps} if steps else {},
             "out_dir": str(out) if out is not None else base.get("out_dir", "outputs"),
             "source_run": str(run_dir.resolve())}  # the trainer loads (and checks) the source's checkpoint
    base.pop("loss", None)  # the source's loss settings do not apply to the edit's loss
    cfg = compose(base, flags, parse_dotlist(list(overrides)) if overrides else None)
    if not cfg.prompt.strip():
        raise DreamgenError("the new prompt is empty")
    trainer = Trainer(cfg)
    new_dir = new_run_dir(cfg.out_dir, cfg.prompt)
    trainer.attach(new_dir)
    log.info("editing %s (%r -> %r) into %s", run_dir, source_prompt, cfg.prompt, new_dir)
    _fit_and_export(trainer, new_dir, t0)


def _export(geometry, cfg, run_dir: Path, formats: Optional[list[str]] = None) -> dict:
    from dreamgen.export import export_mesh

    export_cfg = cfg.export
    if formats:
        export_cfg.formats = formats
    return export_mesh(geometry, export_cfg, run_dir)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `dreamgen run`."),
    format: list[str] = typer.Option(["glb"], "--format", help="glb and/or obj (repeat the option)."),
) -> None:
    """Extract the mesh of a run's last checkpoint again (e.g. as OBJ, or with other export.* settings)."""
    from dreamgen.train import load_scene

    bad = [f for f in format if f not in ("glb", "obj")]
    if bad:
        raise DreamgenError(f"unknown format {bad[0]!r}; valid formats: glb, obj")
    cfg, scene, step = load_scene(run_dir)
    paths = _export(scene.particles[0], cfg, run_dir, formats=list(format))
    log.info("exported step %d: %s", step, ", ".join(str(p) for p in paths.values()))


@config_app.command("show")
def config_show(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file or preset name."),
    loss: Optional[str] = typer.Option(None, "--loss"),
    guidance: Optional[str] = typer.Option(None, "--guidance"),
) -> None:
    """Print the fully resolved configuration."""
    from dreamgen.config import load_config, to_yaml

    cfg = load_config(config, list(overrides or []), **{"loss.name": loss, **_guidance_flags(guidance)})
    typer.echo(to_yaml(cfg), nl=False)


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
    views: int = typer.Option(8, "--views"),
    resolution: int = typer.Option(64, "--resolution"),
) -> None:
    """Compare a run with the true object of the procedural world (writes RUN_DIR/eval.json)."""
    from dreamgen.evaluation import evaluate_run

    m = evaluate_run(run_dir, views, resolution)
    janus = "" if m["janus"] is None else f", Janus {m['janus']:.2f}"
    typer.echo(f"{m['prompt']}: silhouette IoU {m['silhouette_iou']:.3f}, volumetric IoU {m['volumetric_iou']:.3f}, "
               f"colour error {m['colour_error']:.3f}{janus}, object rank-1 {'yes' if m['rank1'] else 'NO'} "
               f"({', '.join(f'{k} {v:.2f}' for k, v in sorted(m['shape_scores'].items(), key=lambda kv: -kv[1]))})")


@app.command()
def lab2d(
    loss: str = typer.Option(..., "--loss", help="A registered loss, or 'all' for the docs table."),
    setting: str = typer.Option("particles", "--setting", help="particles | camera"),
    target: str = typer.Option("gaussian", "--target", help="gaussian | mixture"),
    steps: int = typer.Option(3000, "--steps"),
    lr: float = typer.Option(1e-2, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    n_particles: int = typer.Option(256, "--n-particles"),
    lambda_entropy: Optional[float] = typer.Option(None, "--lambda-entropy", help="ESD's λ."),
    score: str = typer.Option("exact", "--score", help="VSD-family particle score: exact | mlp"),
    guidance_scale: float = typer.Option(1.0, "--guidance-scale"),
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
app.command()(view)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    debug = bool(os.environ.get("DREAMGEN_DEBUG"))
    try:
        app(standalone_mode=False)
    except DreamgenError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors and unexpected failures: one line, no traceback dump
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if debug:
            raise
        typer.echo(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                   "(set DREAMGEN_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
