"""Which torch device a config's ``device`` string means on this machine, and how many CPU cores it may use."""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def _cgroup_cpu_limit(root: Path) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cfs_period_us``),
    None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, capped by a container's CPU quota (``os.cpu_count()``
    counts the host's cores, e.g. 64 in a container limited to 2)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    return max(1, min(n, math.ceil(limit))) if limit is not None else max(1, n)
