#!/usr/bin/env python
"""Train the embedded prior (``--guidance shapes``) from scratch and export it to dreamgen/assets.

    python scripts/train_prior.py --device cuda --time-budget 400      # one H100/H200, ~7 minutes all included
    python scripts/train_prior.py --device cpu --steps 2000 --n-images 4000 --export /tmp/prior.safetensors

Rerunning with the same --out resumes from its checkpoint.pt. See dreamgen/prior/train.py for the method.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

T_START = time.time()  # --time-budget counts from here, imports and data generation included
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from dreamgen.prior.train import TrainConfig, Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=d.steps, help="stop after this many optimiser steps in total")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="0: 512 on CUDA, 32 on CPU")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--n-images", type=int, default=d.n_images, help="renders in the (seeded) training set")
    ap.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", default=d.out, help="work dir: checkpoint.pt, metrics.jsonl, samples_*.png")
    ap.add_argument("--export", default=d.export,
                    help="where the EMA weights go (fp16 safetensors; the .json spec beside it); '' to skip")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--time-budget", type=float, default=d.time_budget,
                    help="seconds from start (data included) after which training stops and exports; 0: no limit")
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    ap.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps of the sample grid")
    a = ap.parse_args(argv)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_images=a.n_images, device=a.device,
                      out=a.out, export=a.export, seed=a.seed, time_budget=a.time_budget, log_every=a.log_every,
                      ckpt_every=a.ckpt_every, sample_steps=a.sample_steps)
    Trainer(cfg, t_start=T_START).train()


if __name__ == "__main__":
    main()
