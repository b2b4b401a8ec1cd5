"""The lab's report: one terminal line per run, scatter plots, and the markdown table kept in docs/losses.md."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from dreamgen.lab2d.run import LabResult, LabSkip


def format_result(r: LabResult | LabSkip) -> str:
    """One line for the terminal."""
    if isinstance(r, LabSkip):
        return f"{r.label:<28} {r.setting:<9} {r.target:<8} skipped: {r.reason}"
    modes = "" if r.modes_covered is None else f"  modes {r.modes_covered:.2f}"
    return (f"{r.label:<28} {r.setting:<9} {r.target:<8} trace ratio {r.trace_ratio:6.3f}  "
            f"mean error {r.mean_error:6.3f}{modes}  {1e3 * r.sec_per_step:6.1f} ms/step")


def plot_name(r: LabResult) -> str:
    tag = "-".join(f"{k}{v}" for k, v in r.overrides.items())
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(filter(None, [r.loss, tag, r.setting, r.target]))) + ".png"


def save_scatter(r: LabResult, path: Path, size: int = 360) -> Path:
    """Target samples (blue) and fitted samples (orange) as a PNG, drawn with PIL."""
    from PIL import Image, ImageDraw

    pts = torch.cat([r.target_samples, r.fitted])
    pts = pts[torch.isfinite(pts).all(1)]
    lo, hi = pts.quantile(0.005, 0).floor() - 0.5, pts.quantile(0.995, 0).ceil() + 0.5
    span = float((hi - lo).max())
    lo = (lo + hi) / 2 - span / 2
    pad, top = 24, 22
    inner = size - 2 * pad

    def xy(p: Tensor) -> tuple[float, float]:
        u = (p - lo) / span
        return pad + float(u[0]) * inner, top + (1 - float(u[1])) * inner

    img = Image.new("RGB", (size, size + top - pad // 2), "white")
    d = ImageDraw.Draw(img)
    tick = min(m * 10**e for e in range(-1, 4) for m in (1, 2, 5) if span / (m * 10**e) <= 10)
    for k in range(math.ceil(span / tick) + 2):
        for axis in (0, 1):
            v = (math.floor(float(lo[axis]) / tick) + k) * tick
            f = (v - float(lo[axis])) / span
            if 0 <= f <= 1:
                if axis == 0:
                    x0 = pad + f * inner
                    d.line([(x0, top), (x0, top + inner)], fill=(225, 225, 225))
                    d.text((x0 - 3, top + inner + 2), f"{v:g}", fill=(90, 90, 90))
                else:
                    y0 = top + (1 - f) * inner
                    d.line([(pad, y0), (pad + inner, y0)], fill=(225, 225, 225))
                    d.text((2, y0 - 5), f"{v:g}", fill=(90, 90, 90))
    for pts_, colour in ((r.target_samples, (31, 119, 180)), (r.fitted, (255, 127, 14))):
        for p in pts_[torch.isfinite(pts_).all(1)]:
            x, y = xy(p)
            if not (pad <= x <= pad + inner and top <= y <= top + inner):
                continue
            d.ellipse([x - 1.6, y - 1.6, x + 1.6, y + 1.6], fill=colour)
    d.rectangle([pad, top, pad + inner, top + inner], outline=(120, 120, 120))
    d.text((pad, 4), f"{r.label} | {r.setting} | {r.target} | trace ratio {r.trace_ratio:.3f}", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


TABLE_BEGIN, TABLE_END = "<!-- lab2d-table:begin -->", "<!-- lab2d-table:end -->"


def markdown_table(rows: Sequence[LabResult | LabSkip], plot_dir: str | None = None) -> str:
    """A markdown table, one row per run; ``plot_dir`` (relative to the markdown file) links each scatter plot."""
    lines = ["| loss | setting | target | trace ratio | mean error | modes covered | ms / step | plot |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if isinstance(r, LabSkip):
            lines.append(f"| {r.label} | {r.setting} | {r.target} | — | — | — | — | skipped: {r.reason} |")
            continue
        modes = "—" if r.modes_covered is None else f"{r.modes_covered:.2f}"
        plot = f"[png]({plot_dir}/{plot_name(r)})" if plot_dir is not None else ""
        lines.append(f"| {r.label} | {r.setting} | {r.target} | {r.trace_ratio:.3f} | {r.mean_error:.3f} | "
                     f"{modes} | {1e3 * r.sec_per_step:.1f} | {plot} |")
    return "\n".join(lines)


def write_report(rows: Sequence[LabResult | LabSkip], markdown: Path, plot_dir: Path, note: str = "") -> Path:
    """Scatter PNGs into ``plot_dir``; the table into ``markdown`` between the lab2d-table markers (the rest of the
    file, the hand-written discussion, is kept), or a new file holding only the table."""
    for r in rows:
        if isinstance(r, LabResult):
            save_scatter(r, plot_dir / plot_name(r))
    try:
        rel = plot_dir.resolve().relative_to(markdown.resolve().parent).as_posix()
    except ValueError:
        rel = plot_dir.resolve().as_posix()
    block = f"{TABLE_BEGIN}\n{note}\n\n{markdown_table(rows, rel)}\n{TABLE_END}" if note else \
        f"{TABLE_BEGIN}\n{markdown_table(rows, rel)}\n{TABLE_END}"
    text = markdown.read_text() if markdown.exists() else ""
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = (text + "\n\n" if text else "# 2-D exact-score lab\n\n") + block + "\n"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text)
    return markdown
