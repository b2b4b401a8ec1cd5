"""Maps config names (``sds``, ``stable-diffusion``, ``hashgrid-nerf``...) to classes and their config dataclasses.

A component registers itself with ``@register(kind, name, config=CfgClass, summary=...)``. Adding a loss or a
guidance is one new file plus its module path in ``_MODULES`` below (imported lazily, so ``dreamgen --help`` does not
import diffusers).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from dreamgen.errors import ConfigError

KINDS = ("guidance", "loss", "geometry")

# Modules whose import registers components. Kept explicit so the registry is complete without scanning.
_MODULES = (
    "dreamgen.guidance.auto",
    "dreamgen.guidance.stable_diffusion",
    "dreamgen.guidance.shapes",
    "dreamgen.geometry.nerf",
    "dreamgen.geometry.dmtet",
    "dreamgen.losses",
)


@dataclass
class Entry:
    name: str
    cls: type
    config: type
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_loaded = False


def register(kind: str, name: str, *, config: type, summary: str = "", **meta: Any) -> Callable[[type], type]:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}")

    def deco(cls: type) -> type:
        _REGISTRY[kind][name] = Entry(name, cls, config, summary, dict(meta))
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _MODULES:
        importlib.import_module(mod)
    _loaded = True


def entries(kind: str) -> dict[str, Entry]:
    _load_all()
    return dict(_REGISTRY[kind])


def lookup(kind: str, name: str) -> Entry:
    _load_all()
    table = _REGISTRY[kind]
    if name not in table:
        valid = ", ".join(sorted(table))
        raise ConfigError(f"unknown {kind} {name!r}; valid names: {valid}")
    return table[name]
