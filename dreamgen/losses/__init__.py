"""Distillation losses, one file per method; importing this package registers every module in it."""

import importlib
import pkgutil

from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, ScoreCore, surrogate_loss

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "core"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DistillationLoss", "LossConfig", "LossInput", "LossOutput", "ScoreCore", "surrogate_loss"]
