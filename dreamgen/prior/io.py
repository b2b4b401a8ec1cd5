"""Saving and loading the embedded prior: fp16 safetensors weights + a JSON file with the spec and training notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dreamgen.errors import GuidanceLoadError
from dreamgen.prior.model import PriorSpec, ShapesPrior

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_WEIGHTS = ASSETS_DIR / "shapes_prior.safetensors"
TRAIN_HINT = "train them with `python scripts/train_prior.py` (a few minutes on a GPU)"


def spec_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_prior(model: ShapesPrior, weights: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``weights`` (fp16 safetensors) and its ``.json`` sibling (spec + ``meta``). Returns the weights path."""
    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights))
    weights.chmod(0o644)  # safetensors creates it owner-only; package data must be readable by every user
    spec_path(weights).write_text(json.dumps({"spec": model.spec.to_dict(), "meta": meta or {}}, indent=2) + "\n")
    return weights


def load_prior(weights: str | Path = "", device: str | torch.device = "cpu") -> ShapesPrior:
    """Load the prior in float32, offline; any problem is a one-line :class:`GuidanceLoadError`."""
    weights = Path(weights) if str(weights) else DEFAULT_WEIGHTS
    cfg_file = spec_path(weights)
    if not weights.is_file() or not cfg_file.is_file():
        missing = weights if not weights.is_file() else cfg_file
        raise GuidanceLoadError(f"embedded prior weights not found ({missing}); {TRAIN_HINT}")
    try:
        spec = PriorSpec.from_dict(json.loads(cfg_file.read_text())["spec"])
        model = ShapesPrior(spec)
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except Exception as e:  # corrupt file, wrong layout, spec/weights mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GuidanceLoadError(f"could not load the embedded prior from {weights}: {first}; {TRAIN_HINT}") from None
    return model.to(device).eval().requires_grad_(False)
