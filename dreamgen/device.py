"""Which torch device a config's ``device`` string means on this machine."""

from __future__ import annotations

import torch

from dreamgen.errors import DreamgenError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda``/``cuda:N`` must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DreamgenError(f"device={name} but CUDA is not available on this machine; use device=cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DreamgenError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
