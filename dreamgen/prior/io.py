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
# The packaged weights, by the name a guidance config gives them (docs/prior.md): v1 is the 32-px text-only prior of
# six objects (the better teacher for text-only SDS at 32 px), v2 the 64-px eight-object prior with a camera input,
# v2-pose v2 fine-tuned to take the layout from the camera at the top of the noise schedule (the tv's and house's).
PACKAGED = {"v1": ASSETS_DIR / "shapes_prior_v1.safetensors", "v2": ASSETS_DIR / "shapes_prior_v2.safetensors",
            "v2-pose": ASSETS_DIR / "shapes_prior_v2_pose.safetensors"}
DEFAULT_WEIGHTS = PACKAGED["v2"]  # where scripts/train_prior.py exports
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


def weights_path(weights: str | Path) -> Path:
    """A packaged name (v1, v2, v2-pose) or a path -> the path of the ``.safetensors`` file."""
    return PACKAGED.get(str(weights), Path(weights))


def _missing(path: Path) -> GuidanceLoadError:
    return GuidanceLoadError(f"embedded prior weights not found ({path}); {TRAIN_HINT}")


def load_spec(weights: str | Path) -> PriorSpec:
    """The spec of a set of weights (reads only its ``.json``: cheap enough to check prompts with)."""
    weights = weights_path(weights)
    if not spec_path(weights).is_file():
        raise _missing(spec_path(weights))
    try:
        return PriorSpec.from_dict(json.loads(spec_path(weights).read_text())["spec"])
    except Exception as e:
        raise GuidanceLoadError(f"could not read the embedded prior's spec {spec_path(weights)}: {e}; "
                                f"{TRAIN_HINT}") from None


def load_prior(weights: str | Path = "v2", device: str | torch.device = "cpu") -> ShapesPrior:
    """Load the prior (a packaged name or a path) in float32, offline; any problem is a one-line
    :class:`GuidanceLoadError`."""
    weights = weights_path(weights)
    if not weights.is_file():
        raise _missing(weights)
    spec = load_spec(weights)
    try:
        model = ShapesPrior(spec)
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except Exception as e:  # corrupt file, wrong layout, spec/weights mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GuidanceLoadError(f"could not load the embedded prior from {weights}: {first}; {TRAIN_HINT}") from None
    return model.to(device).eval().requires_grad_(False)
