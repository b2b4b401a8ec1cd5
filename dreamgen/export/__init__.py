"""Mesh export of a density field: marching cubes, vertex colours, atomic GLB/OBJ writing."""

from dreamgen.export.io import export_mesh, save_mesh
from dreamgen.export.mesh import DensityField, ExportConfig, auto_threshold, density_grid, extract_mesh

__all__ = ["DensityField", "ExportConfig", "auto_threshold", "density_grid", "export_mesh", "extract_mesh", "save_mesh"]
