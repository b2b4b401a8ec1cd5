#!/usr/bin/env python
"""Write a tiny random Stable-Diffusion-compatible pipeline folder, to try the SD code path without real weights.

    python scripts/make_tiny_pipeline.py /tmp/tiny-sd [--prediction-type v_prediction]

then give /tmp/tiny-sd as the stable-diffusion guidance's ``pretrained`` (a pipeline folder, like a real model's).

The images it guides towards are meaningless; it only exercises loading, shapes and gradients.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from dreamgen.testing.tiny_sd import build_tiny_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (model_index.json, unet/, vae/, ...)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon")
    parser.add_argument("--image-size", type=int, default=32, help="render side the tiny model expects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=("tiny", "sd21-base"), default="tiny",
                        help="sd21-base: Stable Diffusion 2.1-base shapes with random weights (GPU benchmarks)")
    args = parser.parse_args(argv)
    path = build_tiny_pipeline(args.out_dir, seed=args.seed, prediction_type=args.prediction_type, preset=args.preset,
                               image_size=args.image_size)
    print(f"wrote a tiny {args.prediction_type} Stable Diffusion pipeline to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
