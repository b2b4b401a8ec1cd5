#!/usr/bin/env python
"""Benchmark optimisation steps: per-phase time (render, encode, loss = guidance forward, backward, optimizer),
steps/s and peak memory, printed and written to a JSON file.

    python scripts/bench.py --steps 20                       # the default config (embedded prior on CPU)
    python scripts/bench.py --guidance /path/to/pipeline     # any diffusers SD folder
    python scripts/bench.py --sd-shaped --device cuda        # SD-2.1-base-shaped random weights (no download)

Any further ``key=value`` arguments are config overrides.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamgen.config import guidance_flags, load_config
from dreamgen.session import Session
from dreamgen.train import phase_summary


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

    tmp = Path(tempfile.mkdtemp(prefix="dreamgen-bench-"))
    guidance = args.guidance
    if args.sd_shaped:
        from dreamgen.testing.tiny_sd import build_tiny_pipeline

        guidance = str(tmp / "sd21-shaped")
        build_tiny_pipeline(guidance, preset="sd21-base")
    flags = {"prompt": args.prompt, "device": args.device, "loss.name": args.loss,
             "trainer.steps": args.steps + args.warmup, "trainer.preview_every": 0,
             "trainer.checkpoint_every": 10**9, "trainer.progress": False}
    flags.update(guidance_flags(guidance))
    cfg = load_config(args.config, args.overrides, **flags)
    trainer = Session.new(cfg, run_dir=tmp / "run").trainer
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    records = []
    t0 = time.perf_counter()
    for _ in range(cfg.trainer.steps):
        records.append(trainer.train_step())
    wall = time.perf_counter() - t0

    phases = phase_summary(records, skip=args.warmup)
    result = {
        "prompt": args.prompt, "loss": cfg.loss.name, "guidance": cfg.guidance.name,
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name() if trainer.device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "resolution": trainer.sampler.resolution(0), "batch": cfg.camera.batch_size,
        "samples_per_ray": cfg.renderer.num_samples, "seconds_per_phase": phases, "wall_s": wall,
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if trainer.device.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['device']} {result['device_name']}: {phases['steps_per_s']:.2f} steps/s, "
          f"peak {result['peak_memory_mb']:.0f} MB")
    for k in (*[p for p in phases if p not in ("total", "steps_per_s")], "total"):
        print(f"  {k:<10} {phases[k] * 1000:8.1f} ms")
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
