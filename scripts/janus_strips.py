#!/usr/bin/env python
"""Turntable strips for docs/janus.md: the true object's orbit, then the albedo orbit of each run (its
``previews/final.png``), one row each, azimuth 0° (the front) first.

    python scripts/janus_strips.py docs/janus/house_strips.png \\
        "SDS, text only (seed 8)=outputs/league-janus-house/sds__a-yellow-house__s8" \\
        "camera-aware (seed 8)=outputs/league-janus-house/camera-aware__a-yellow-house__s8"

The runs must have been evaluated (``dreamgen eval``, or run by ``dreamgen league``): the object and colour come from
the first run's eval.json, the cameras from its config.yaml, so the true row is seen as the runs' previews are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from dreamgen.cameras import CameraConfig, CameraSampler
from dreamgen.world.render import render

SCALE, LABEL_WIDTH, HEADER = 2, 230, 30


def albedo_row(run: Path, views: int) -> np.ndarray:
    """[H, views·H, 3] uint8: the albedo row (second of shaded, albedo[, normals]) of the run's final preview."""
    final = np.asarray(Image.open(run / "previews" / "final.png").convert("RGB"))
    side = final.shape[1] // views
    return final[side:2 * side]


def true_row(run: Path, views: int, side: int) -> np.ndarray:
    truth = json.loads((run / "eval.json").read_text())
    cfg = OmegaConf.merge(OmegaConf.structured(CameraConfig), OmegaConf.load(run / "config.yaml").camera)
    cams = CameraSampler(OmegaConf.to_object(cfg)).orbit(views, side)
    rgb, _, _ = render(truth["shape"], truth["colour"], cams, supersample=2, ambient=1.0)  # [V,H,W,3], unshaded
    return (rgb.permute(1, 0, 2, 3).reshape(side, views * side, 3).numpy() * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, one row each")
    ap.add_argument("--views", type=int, default=8, help="the runs' trainer.preview_views")
    args = ap.parse_args()
    runs = [(label, Path(path)) for label, path in (r.split("=", 1) for r in args.runs)]
    strips = [(label, albedo_row(path, args.views)) for label, path in runs]
    side = strips[0][1].shape[0]
    truth = json.loads((runs[0][1] / "eval.json").read_text())
    strips.insert(0, (f"true {truth['shape']} (ground truth)", true_row(runs[0][1], args.views, side)))

    cell = side * SCALE
    sheet = Image.new("RGB", (LABEL_WIDTH + args.views * cell, HEADER + len(strips) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for v in range(args.views):
        draw.text((LABEL_WIDTH + v * cell + cell // 2 - 8, 10), f"{v * 360 // args.views}°", fill="black")
    for r, (label, strip) in enumerate(strips):
        img = Image.fromarray(strip).resize((strip.shape[1] * SCALE, cell), Image.NEAREST)
        sheet.paste(img, (LABEL_WIDTH, HEADER + r * cell))
        draw.text((8, HEADER + r * cell + cell // 2 - 4), label, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{args.out}: {len(strips)} rows × {args.views} views")


if __name__ == "__main__":
    main()
