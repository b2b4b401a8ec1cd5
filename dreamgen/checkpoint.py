"""Run checkpoints: ``checkpoints/last.pt`` and the one before it, ``prev.pt``, both loadable without executing code.

Saving rotates ``last.pt`` to ``prev.pt`` and writes the new ``last.pt`` atomically, so a kill at any point leaves
at least one whole checkpoint. Loading uses ``torch.load(weights_only=True)`` (tensors and plain Python types only:
a crafted file cannot run code) and falls back to ``prev.pt``, with a message, when ``last.pt`` is missing or
damaged (e.g. truncated by a full disk).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from dreamgen.errors import CheckpointError
from dreamgen.runs import atomic_path

log = logging.getLogger("dreamgen")
LAST, PREV = "last.pt", "prev.pt"


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    folder = Path(folder)
    buf = io.BytesIO()
    torch.save(state, buf)
    last = folder / LAST
    with atomic_path(last) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        if last.exists():
            os.replace(last, folder / PREV)  # the new file is complete on disk before the old one moves aside
    return last


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def load_checkpoint(folder: Path, device: torch.device | str = "cpu") -> tuple[dict[str, Any], Path]:
    """(state, path) of the newest loadable checkpoint in ``folder``: ``last.pt``, else ``prev.pt``."""
    folder = Path(folder)
    problems = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            problems.append(f"{name} is missing")
            continue
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # truncated zip, pickle that wants code, wrong format
            problems.append(f"{name} is unreadable ({_first_line(e)})")
            continue
        if not isinstance(state, dict) or "step" not in state:
            problems.append(f"{name} is not a dreamgen checkpoint")
            continue
        if name == PREV:
            log.warning("checkpoint %s; resuming from %s (step %d) instead", problems[0], path, int(state["step"]))
        return state, path
    raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(problems)}")


def has_checkpoint(folder: Path) -> bool:
    return any((Path(folder) / n).exists() for n in (LAST, PREV))
