"""Geometry fields: the multi-resolution hash encoding and the hash-grid NeRF (coarse stage)."""

from dreamgen.geometry.hashgrid import HashGridConfig, HashGridEncoding, TcnnHashGrid, make_hash_grid
from dreamgen.geometry.nerf import HashGridNeRF, NeRFConfig

__all__ = ["HashGridConfig", "HashGridEncoding", "TcnnHashGrid", "make_hash_grid", "HashGridNeRF", "NeRFConfig"]
