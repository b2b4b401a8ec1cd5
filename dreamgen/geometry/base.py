"""The two geometry interfaces every consumer (renderers, hand-off, export, eval) is written against.

- :class:`DensityField` (coarse stage, e.g. the hash-grid NeRF): a volume density and an albedo over
  ``[-radius, radius]^3``; its surface is an isosurface of the density (:mod:`dreamgen.geometry.isosurface`).
- :class:`SurfaceField` (fine stage, e.g. DMTet): an explicit triangle surface, differentiable in its parameters, and
  an albedo field.

They are structural (``typing.Protocol``): any object with these members qualifies, so analytic test fields need no
base class. ``isinstance(g, SurfaceField)`` tells the two apart.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class DensityField(Protocol):
    radius: float  # the field lives in [-radius, radius]^3

    def density(self, points: Tensor) -> Tensor:
        """points [N,3] -> σ [N], non-negative (0 outside the box)."""
        ...

    def albedo(self, points: Tensor) -> Tensor:
        """points [N,3] -> albedo [N,3] in [0,1]."""
        ...


@runtime_checkable
class SurfaceField(Protocol):
    radius: float  # the albedo field's box, [-radius, radius]^3

    def surface(self) -> tuple[Tensor, Tensor]:
        """The current surface: verts [V,3] (differentiable in the parameters), faces [F,3] long, wound
        counter-clockwise seen from outside."""
        ...

    def albedo(self, points: Tensor) -> Tensor:
        """points [N,3] -> albedo [N,3] in [0,1]."""
        ...


def field_device(geometry: object) -> torch.device:
    """Where a field's parameters live (query points must go there); CPU for parameter-free analytic fields."""
    params = getattr(geometry, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")
