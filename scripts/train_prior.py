#!/usr/bin/env python
"""Train the embedded prior (``--guidance shapes`` / ``shapes-cam``) from scratch and export it to dreamgen/assets.

    python scripts/train_prior.py --preset v2 --device cuda --time-budget 240 --out /tmp/prior_v2 \\
        --export dreamgen/assets/shapes_prior_v2.safetensors > /tmp/prior_v2.log     # one H200, ~4 minutes
    python scripts/train_prior.py --preset v1 --device cuda --time-budget 330      # the 32-px text-only prior
    python scripts/train_prior.py --device cpu --steps 2000 --n-images 4000 --export /tmp/prior.safetensors

Presets: v2 (64 px, camera input; the default), v1 (32 px, text only), tiny (v2 at toy widths, for smoke tests).
Rerunning with the same --out resumes from its checkpoint.pt. Progress is printed as plain lines (a log file
reads well). See dreamgen/prior/train.py for the method.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

T_START = time.time()  # --time-budget counts from here, imports and data generation included
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from dreamgen.prior.train import PRESETS, TrainConfig, Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="v2", help="model architecture (default v2)")
    ap.add_argument("--steps", type=int, default=d.steps, help="stop after this many optimiser steps in total")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="0: 512 on CUDA, 32 on CPU")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--n-images", type=int, default=d.n_images, help="renders in the (seeded) training set")
    ap.add_argument("--p-camera-drop", type=float, default=d.p_camera_drop,
                    help="fraction of samples trained with the null camera (independent of caption dropout)")
    ap.add_argument("--weight-floor", type=float, default=d.weight_floor,
                    help="lower bound of the min-SNR loss weight (it falls to 0 at high noise, where the layout forms)")
    ap.add_argument("--front-bias", type=float, default=d.front_bias,
                    help="fraction of the house/tv/arrow renders taken within 45° of the front "
                         "(web photos' bias; 0.25: uniform)")
    ap.add_argument("--high-noise-share", type=float, default=d.high_noise_share,
                    help="share of each batch drawn from the noisiest tenth of the schedule at weight 1, where "
                         "only the caption and the camera can set the layout (0: none)")
    ap.add_argument("--init", default=d.init,
                    help="start from these exported weights (a packaged name such as v2, or a path): a fine-tune; "
                         "their spec replaces --preset")
    ap.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", default=d.out, help="work dir: checkpoint.pt, metrics.jsonl, samples_*.png")
    ap.add_argument("--export", default=d.export,
                    help="where the EMA weights go (fp16 safetensors; the .json spec beside it); '' to skip")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--time-budget", type=float, default=d.time_budget,
                    help="seconds from start (data included) after which training stops and exports; 0: no limit")
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    ap.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps of the sample grid; 0: none")
    a = ap.parse_args(argv)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_images=a.n_images,
                      p_camera_drop=a.p_camera_drop, weight_floor=a.weight_floor, init=a.init,
                      front_bias=a.front_bias, high_noise_share=a.high_noise_share,
                      device=a.device, out=a.out, export=a.export, seed=a.seed,
                      time_budget=a.time_budget, log_every=a.log_every, ckpt_every=a.ckpt_every,
                      sample_steps=a.sample_steps, spec=PRESETS[a.preset]())
    Trainer(cfg, t_start=T_START).train()


if __name__ == "__main__":
    main()
