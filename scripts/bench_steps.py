#!/usr/bin/env python
"""Benchmark optimisation steps of one configuration: ms per phase (render, encode, loss = guidance forward + loss,
backward, optimizer), steps/s, peak memory and the guidance's share, printed and written to a JSON file.

    python scripts/bench_steps.py --steps 20                       # the default (embedded prior on CPU)
    python scripts/bench_steps.py --guidance /path/to/pipeline     # any diffusers SD folder
    python scripts/bench_steps.py --sd-shaped --device cuda --loss esd camera.resolution=[512]   # no download

``--sd-shaped`` builds a Stable-Diffusion-2.1-base-shaped pipeline with random weights (the FLOPs are what matter).
Any further ``key=value`` arguments are config overrides. The GPU proof (several of these plus CUDA tests and a full
run) is scripts/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from dreamgen.benchmark import format_result, measure
from dreamgen.config import job_flags, load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="steps excluded from the averages")
    ap.add_argument("--prompt", default="a red cube")
    ap.add_argument("--loss", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--guidance", default=None, help="registered guidance name or a pipeline folder")
    ap.add_argument("--sd-shaped", action="store_true",
                    help="build a Stable-Diffusion-2.1-base-shaped pipeline with random weights and use it")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="outputs/bench.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    guidance = args.guidance
    if args.sd_shaped:
        from dreamgen.testing.tiny_sd import build_tiny_pipeline

        guidance = str(build_tiny_pipeline(Path(tempfile.mkdtemp(prefix="sd21-shaped-")) / "pipe", preset="sd21-base"))
    cfg = load_config(args.config, args.overrides, prompt=args.prompt, device=args.device,
                      **job_flags(args.loss, guidance))
    result = measure(cfg, args.steps, args.warmup)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_result(result))
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
