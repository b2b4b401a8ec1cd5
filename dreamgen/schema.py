"""Valid ranges of config fields, declared next to the field, checked when a config is composed.

A config dataclass declares a number's range with :func:`bounded` instead of ``field``::

    steps: int = bounded(1000, ge=1)
    albedo_only_prob: float = bounded(0.1, ge=0.0, le=1.0)
    resolution: list[int] = bounded(factory=lambda: [64], gt=0)     # every element
    t_max: Any = bounded(0.98, gt=0.0, lt=1.0)                       # a number or a schedule [s0, v0, v1, s1]
                                                                     # (read at a step with scheduled())
    backend: str = bounded("auto", choices=("auto", "torch", "tcnn"))

:func:`check` walks a (nested) config dataclass and raises one :class:`ConfigError` naming the key, the value and
the valid range. Rules that relate several fields live in a ``check(self, key)`` method of the dataclass (e.g.
``t_min < t_max``); it is called with the section's dotted key prefix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from dreamgen.errors import ConfigError

_BOUNDS = ("ge", "gt", "le", "lt")
_SYMBOL = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def bounded(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: Sequence[Any] | None = None, nullable: bool = False) -> Any:
    """A dataclass field with a declared valid range (see the module docstring). ``nullable``: None is valid too."""
    meta: dict[str, Any] = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if nullable:
        meta["nullable"] = True
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(meta: dict[str, Any]) -> str:
    """The valid range in words, e.g. '≥ 1', 'in [0, 1]', 'one of auto, torch'."""
    if "choices" in meta:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    lo = next((f"{'[' if k == 'ge' else '('}{meta[k]:g}" for k in ("ge", "gt") if k in meta), None)
    hi = next((f"{meta[k]:g}{']' if k == 'le' else ')'}" for k in ("le", "lt") if k in meta), None)
    if lo and hi:
        return f"in {lo}, {hi}"
    k = next(k for k in _BOUNDS if k in meta)
    return f"{_SYMBOL[k]} {meta[k]:g}"


def _ok(value: Any, meta: dict[str, Any]) -> bool:
    if "choices" in meta:
        return value in meta["choices"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))


def _values(value: Any, scheduled: bool) -> list[Any]:
    """The numbers a field's range applies to: the value, a list's elements, or (fields typed ``Any``, which take
    a number or a schedule ``[start_step, v0, v1, end_step]``) a schedule's two values."""
    if isinstance(value, (list, tuple)):
        if scheduled:
            if len(value) != 4:
                return [value]  # not a schedule: reported as invalid
            return [value[1], value[2]]
        return list(value)
    return [value]


def check(cfg: Any, key: str) -> None:
    """Check every bounded field of the dataclass ``cfg`` (recursively) and its ``check`` method; ``key`` is the
    dotted prefix used in messages (e.g. ``trainer``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{key}.{f.name}" if key else f.name
        if dataclasses.is_dataclass(value):
            check(value, path)
            continue
        meta = dict(f.metadata)
        if not meta or (value is None and meta.get("nullable")):
            continue
        if "choices" in meta and isinstance(value, (list, tuple)):
            bad = [v for v in value if not _ok(v, meta)]
        elif "choices" in meta:
            bad = [] if _ok(value, meta) else [value]
        else:
            bad = [v for v in _values(value, f.type in (Any, "Any")) if not _ok(v, meta)]
        if bad:
            what = " (each element)" if isinstance(value, (list, tuple)) and f.type not in (Any, "Any") else ""
            raise ConfigError(f"{path}={_show(value)}: must be {describe(meta)}{what}")
    rule = getattr(cfg, "check", None)
    if callable(rule):
        rule(key)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else f"{value}"


# ---- schedules: a number, or [start_step, v0, v1, end_step] ---------------------------------------------------------
def scheduled(value: Any, step: int) -> float:
    """A scalar, or ``[start_step, v0, v1, end_step]`` linearly interpolated in step (constant outside)."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Sequence) and len(value) == 4:
        s0, v0, v1, s1 = (float(v) for v in value)
        if s1 <= s0:
            return v0 if step < s0 else v1
        p = min(max((step - s0) / (s1 - s0), 0.0), 1.0)
        return v0 + (v1 - v0) * p
    raise ValueError(f"expected a number or [start_step, v0, v1, end_step], got {value!r}")


def change_points(*values: Any, last: int = 10**6) -> list[int]:
    """The steps at which rules relating scheduled fields must hold: 0, ``last`` and either side of every schedule's
    start and end (between them a schedule is linear, so a linear rule holding there holds everywhere)."""
    points = {0, last}
    for v in values:
        if isinstance(v, Sequence) and len(v) == 4:
            points |= {int(v[0]), int(v[3]), int(v[0]) - 1, int(v[3]) + 1}
    return sorted(p for p in points if p >= 0)
