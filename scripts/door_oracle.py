#!/usr/bin/env python
"""The door score's ceiling on a run's shape: the run repainted with the true paint, scored against the true object.

For each evaluated run of a house or a tv (its eval.json holds the alignment to the true object), the front-feature
score of :mod:`dreamgen.world.metrics` — the one `dreamgen eval` reports, against the true object's renders — is
computed for the run's own paint and for the true object's paint carried onto the run's surface (each point takes
the paint of the nearest true surface point: the best any painter could do on that shape). Where even the true paint
scores below 0.5, the shape alone denies the door its pixels (docs/janus.md); `front_feature_on_shape` in eval.json
asks instead whether the run's paint has the door on the shape it has.

    python scripts/door_oracle.py outputs/league-janus-house-rest/*__s[01] --png docs/janus/door_oracle.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

from dreamgen.evaluation.run import RunViews
from dreamgen.world.metrics import (Alignment, front_cameras, front_feature_score, transform_cameras,
                                    true_paint_on_result)
from dreamgen.world.render import render


def score_run(run_dir: Path) -> tuple[dict, torch.Tensor]:
    """({paint: (score, soft per front view)}, the four front views [3·H, 4·W, 3]: truth, own paint, true paint)."""
    truth = json.loads((run_dir / "eval.json").read_text())
    shape, colour = truth["shape"], truth["colour"]
    alignment = Alignment(truth["scale"], tuple(truth["offset"]))
    run = RunViews(run_dir)
    true_paint = true_paint_on_result(shape, colour, alignment)
    cams = front_cameras(4, 64, run.cfg.camera)
    views, scores = [render(shape, colour, cams)[0]], {}
    for paint, render_fn in (("own", run.render), ("true", lambda c: run.repaint(c, true_paint))):
        out = front_feature_score(render_fn, colour, shape, alignment, camera_cfg=run.cfg.camera)
        views.append(render_fn(transform_cameras(cams, alignment.scale, alignment.offset))[0])
        scores[paint] = (out["score"], out["soft"])
    return scores, torch.cat([torch.cat(list(v), 1) for v in views])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="evaluated run folders of a house or a tv")
    ap.add_argument("--png", type=Path, help="also write each run's front views (×3): truth, own paint, true paint")
    args = ap.parse_args()
    sheets = []
    print("| run | paint | front | soft, four front views |\n|---|---|---|---|")
    for run in args.runs:
        scores, sheet = score_run(run)
        sheets.append(sheet)
        for paint, (score, soft) in scores.items():
            print(f"| {run.name} | {paint} | {score:.2f} | {', '.join(f'{v:.2f}' for v in soft)} |", flush=True)
    if args.png:
        sheet = Image.fromarray((torch.cat(sheets, 1).clamp(0, 1) * 255).round().byte().numpy())
        sheet.resize((3 * sheet.width, 3 * sheet.height), Image.NEAREST).save(args.png)


if __name__ == "__main__":
    main()
