"""Geometry: the two field interfaces (``base``), isosurfaces of density fields, the hash encoding, the hash-grid
NeRF (coarse stage) and DMTet (fine stage)."""

from dreamgen.geometry.base import DensityField, SurfaceField
from dreamgen.geometry.hashgrid import HashGridConfig, HashGridEncoding, TcnnHashGrid, make_hash_grid
from dreamgen.geometry.nerf import HashGridNeRF, NeRFConfig

__all__ = ["DensityField", "HashGridConfig", "HashGridEncoding", "HashGridNeRF", "NeRFConfig", "SurfaceField",
           "TcnnHashGrid", "make_hash_grid"]
