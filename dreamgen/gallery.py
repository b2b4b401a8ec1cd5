"""``dreamgen view``: a web gallery of runs, one card per run with its mesh in ``<model-viewer>``, its turntable and
its numbers (prompt, loss, seed, final loss, time, eval metrics), written as ``index.html`` in the folder.

``<model-viewer>`` is vendored (``dreamgen/viewer``, see its README) and copied beside ``index.html``, so a gallery
needs no network. Browsers refuse ES modules and model files on ``file://`` pages, so the 3-D viewers need the page
served over HTTP: ``dreamgen view DIR --serve`` (the turntables show either way).
"""

from __future__ import annotations

import functools
import html
import os
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import typer

from dreamgen.errors import DreamgenError

MODEL_VIEWER_VERSION = "4.4.0"
MODEL_VIEWER_JS = "model-viewer.min.js"
INDEX = "index.html"
_EVAL_LABELS = {"silhouette_iou": "silhouette IoU", "volumetric_iou": "volumetric IoU",
                "colour_error": "colour error", "janus": "Janus", "rank1": "object rank-1"}


@dataclass
class Card:
    """One run of the gallery. ``summary`` is :func:`dreamgen.runs.run_summary`; a batch's manifest adds the item's
    status, error and wall time."""

    name: str
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    status: str | None = None
    error: str | None = None
    seconds: float | None = None
    wall: bool = False  # seconds is the batch's wall time of the item, else the run's summed step timings
    mesh: Path | None = None
    turntable: Path | None = None


def _run_card(name: str, run_dir: Path) -> Card:
    from dreamgen.runs import run_summary

    summary = run_summary(run_dir) if run_dir.is_dir() else {}
    mesh, turntable = run_dir / "mesh.glb", run_dir / "turntable.gif"
    return Card(name, run_dir, summary, seconds=summary.get("seconds"), mesh=mesh if mesh.is_file() else None,
                turntable=turntable if turntable.is_file() else None)


def find_cards(folder: Path) -> list[Card]:
    """The runs of ``folder``: a batch folder (its manifest's items, in order), a run folder (itself), or a folder
    whose subfolders are runs (sorted by name)."""
    from dreamgen.batch.manifest import MANIFEST, Manifest

    folder = Path(folder)
    if not folder.is_dir():
        raise DreamgenError(f"{folder} is not a folder: give a run folder, a batch folder or a folder of runs")
    manifest = Manifest.load(folder) if (folder / MANIFEST).is_file() else None
    if manifest is not None:
        cards = []
        for r in manifest.records.values():
            card = _run_card(r.name, folder / r.run_dir)
            card.summary["prompt"] = card.summary.get("prompt") or r.prompt
            card.status, card.error = r.status, r.error
            if r.seconds:
                card.seconds, card.wall = r.seconds, True
            if r.mesh and (folder / r.mesh).is_file():
                card.mesh = folder / r.mesh
            cards.append(card)
    elif (folder / "config.yaml").is_file():
        cards = [_run_card(folder.name, folder)]
    else:
        cards = [_run_card(p.name, p) for p in sorted(folder.iterdir()) if (p / "config.yaml").is_file()]
    if not cards:
        raise DreamgenError(f"{folder} holds no runs: expected a run folder (config.yaml), a batch folder "
                            "(manifest.json) or a folder of run folders")
    return cards


def _url(path: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(path, base)).as_posix())


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _card_html(card: Card, base: Path) -> str:
    s = card.summary
    prompt = s.get("prompt") or card.name
    rows = [("run", card.name)]
    if card.status:
        rows.append(("status", card.status))
    rows += [(label, s.get(key)) for label, key in (("loss", "loss"), ("texture loss", "texture_loss"),
                                                    ("seed", "seed"))]
    if s.get("step") is not None:
        rows.append(("steps", f"{s['step']}/{s['steps']}" if s.get("steps") else s["step"]))
    rows.append(("final loss", _number(s["final_loss"]) if s.get("final_loss") is not None else None))
    rows.append(("time" if card.wall else "time in steps",
                 f"{card.seconds:.1f} s" if card.seconds is not None else None))
    rows += [(_EVAL_LABELS[k], _number(v)) for k, v in (s.get("eval") or {}).items() if v is not None]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows if v is not None)
    parts = [f'<article class="card" id="{html.escape(card.name)}">']
    if card.mesh is not None:
        parts.append(f'<model-viewer src="{_url(card.mesh, base)}" alt="{html.escape(prompt)}" camera-controls '
                     f'interaction-prompt="none" data-run="{html.escape(card.name)}"></model-viewer>')
    if card.turntable is not None:
        parts.append(f'<img class="turntable" src="{_url(card.turntable, base)}" alt="turntable of '
                     f'{html.escape(prompt)}" loading="lazy">')
    parts.append(f"<h2>{html.escape(prompt)}</h2>")
    if card.error:
        parts.append(f'<p class="error">{html.escape(card.error)}</p>')
    parts.append(f"<table>{table}</table>")
    if card.mesh is not None:
        parts.append(f'<p><a href="{_url(card.mesh, base)}" download>{html.escape(card.mesh.name)}</a></p>')
    parts.append("</article>")
    return "\n".join(parts)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<script type="module" src="{script}"></script>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; background: #f4f4f4; color: #222; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 16px; }}
.card {{ background: #fff; border-radius: 8px; padding: 12px; box-shadow: 0 1px 3px #0002; }}
model-viewer {{ width: 100%; height: 320px; background: #fff; }}
.turntable {{ width: 96px; height: 96px; float: right; margin-left: 8px; }}
h2 {{ font-size: 16px; margin: 8px 0; }}
th {{ text-align: left; font-weight: normal; color: #666; padding-right: 12px; }}
.error {{ color: #b00; }}
#file-note {{ background: #fff3cd; padding: 8px; border-radius: 4px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p id="file-note" hidden>This page was opened from disk: browsers do not load 3-D models on file:// pages. Serve it
with <code>dreamgen view {folder} --serve</code> and open the address it prints.</p>
<script>if (location.protocol === "file:") document.getElementById("file-note").hidden = false;</script>
<main>
{cards}
</main>
<footer><p>Models in glTF's conventions: +Y up, front facing +Z, metres. Viewer: &lt;model-viewer&gt; {version}.
</p></footer>
</body>
</html>
"""


def write_gallery(folder: Path) -> Path:
    """Write ``folder/index.html`` (one card per run of :func:`find_cards`) and the viewer script beside it."""
    from dreamgen.runs import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    cards = find_cards(folder)
    script = files("dreamgen").joinpath("viewer", MODEL_VIEWER_JS).read_bytes()
    target = folder / MODEL_VIEWER_JS
    if not target.is_file() or target.read_bytes() != script:
        atomic_write_bytes(target, script)
    page = _PAGE.format(title=html.escape(f"dreamgen: {folder.resolve().name}"), script=MODEL_VIEWER_JS,
                        folder=html.escape(str(folder)), version=MODEL_VIEWER_VERSION,
                        cards="\n".join(_card_html(c, folder) for c in cards))
    atomic_write_text(folder / INDEX, page)
    return folder / INDEX


class _Handler(SimpleHTTPRequestHandler):
    # Module scripts need a JavaScript type; .glb is not in Python's table.
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary"}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per file fetched would bury the address


def make_server(folder: Path, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1 (``port`` 0: a free one; see ``server.server_address``)."""
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Handler, directory=str(folder)))
    except OSError as e:
        raise DreamgenError(f"cannot serve on 127.0.0.1:{port} ({e.strerror}); choose another --port, or omit it "
                            "for a free one") from None


def view(
    folder: Path = typer.Argument(..., help="A run folder, a batch folder or a folder of runs."),
    serve: bool = typer.Option(False, "--serve", help="Serve the gallery on 127.0.0.1 until Ctrl-C."),
    port: Optional[int] = typer.Option(None, "--port", help="Port for --serve (default: a free one)."),
) -> None:
    """Write FOLDER/index.html: every run's mesh in a 3-D viewer, its turntable, prompt, loss, seed, time and eval
    metrics. Browsers only load the 3-D models over HTTP: add --serve and open the printed address."""
    if port is not None and not serve:
        raise DreamgenError("--port needs --serve")
    index = write_gallery(folder)
    typer.echo(index)
    if not serve:
        return
    server = make_server(index.parent, port or 0)
    typer.echo(f"serving at http://127.0.0.1:{server.server_address[1]}/{INDEX} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C is how serving ends, not an error
        typer.echo("stopped")
    finally:
        server.server_close()
