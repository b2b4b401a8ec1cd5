"""The batch's human-readable outputs: ``summary.md`` (a table of every item) and ``contact_sheet.png`` (one labelled
row per done item: the shaded views of its final preview)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from dreamgen.batch.manifest import Manifest
from dreamgen.runs import atomic_write_text, save_png

ROW_HEIGHT = 96
LABEL_WIDTH = 240


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_summary(manifest: Manifest, names: list[str]) -> Path:
    counts = manifest.counts(names)
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"# dreamgen batch: {Path(manifest.source).name}", "", head, "",
             "| name | prompt | status | steps | final loss | seconds | mesh / error |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        r = manifest.records[name]
        loss = f"{r.final_loss:.4g}" if r.final_loss is not None else ""
        steps = f"{r.step}/{r.steps}" if r.steps else str(r.step)
        last = f"[{r.mesh}]({r.mesh})" if r.mesh and r.status == "done" else (r.error or "")
        lines.append(f"| {_cell(name)} | {_cell(r.prompt)} | {r.status} | {steps} | {loss} | {r.seconds:.1f} | "
                     f"{_cell(last)} |")
    path = manifest.out_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _shaded_row(run_dir: Path) -> Image.Image | None:
    """The first row (lambertian-shaded views) of the run's ``previews/final.png``."""
    final, cfg = run_dir / "previews" / "final.png", run_dir / "config.yaml"
    if not final.exists() or not cfg.exists():
        return None
    views = int((yaml.safe_load(cfg.read_text()).get("trainer") or {}).get("preview_views", 8))
    img = Image.open(final).convert("RGB")
    row = img.crop((0, 0, img.width, img.width // max(views, 1)))
    scale = ROW_HEIGHT / row.height
    return row.resize((max(1, round(row.width * scale)), ROW_HEIGHT), Image.NEAREST)


def write_contact_sheet(manifest: Manifest, names: list[str]) -> Path | None:
    """One row per done item with a final preview; None when there is none."""
    rows = []
    for name in names:
        r = manifest.records[name]
        strip = _shaded_row(manifest.out_dir / r.run_dir) if r.status == "done" else None
        if strip is not None:
            rows.append((r, strip))
    if not rows:
        return None
    width = LABEL_WIDTH + max(s.width for _, s in rows)
    sheet = Image.new("RGB", (width, ROW_HEIGHT * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (r, strip) in enumerate(rows):
        y = i * ROW_HEIGHT
        sheet.paste(strip, (LABEL_WIDTH, y))
        loss = f"loss {r.final_loss:.4g}" if r.final_loss is not None else ""
        draw.multiline_text((6, y + 6), f"{r.name}\n{r.prompt[:34]}\n{loss}", fill="black", spacing=6)
    path = manifest.out_dir / "contact_sheet.png"
    save_png(path, np.asarray(sheet))
    return path
