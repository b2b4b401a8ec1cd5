"""The embedded prior: a small text- (and, v2, camera-) conditioned pixel-space diffusion model of the procedural
world (v1: 32×32 RGB, text only; v2: 64×64 RGB with an optional camera condition).

``scripts/train_prior.py`` trains it from scratch on :func:`dreamgen.world.make_dataset` renders and exports the EMA
weights to ``dreamgen/assets/shapes_prior.{safetensors,json}``; ``dreamgen.guidance.shapes`` serves it to the losses.
"""

from dreamgen.prior.io import DEFAULT_WEIGHTS, load_prior, save_prior
from dreamgen.prior.model import PriorSpec, ShapesPrior

__all__ = ["DEFAULT_WEIGHTS", "PriorSpec", "ShapesPrior", "load_prior", "save_prior"]
