"""Mesh export of a density field: marching cubes, decimation, UV unwrap + albedo bake or vertex colours, atomic
GLB/OBJ writing and a turntable preview of the written file."""

from dreamgen.export.io import export_mesh, save_mesh
from dreamgen.export.mesh import DensityField, ExportConfig, auto_threshold, decimate, density_grid, extract_mesh
from dreamgen.export.texture import extract_textured_mesh
from dreamgen.export.turntable import render_views, write_turntable

__all__ = [
    "DensityField", "ExportConfig", "auto_threshold", "decimate", "density_grid", "export_mesh", "extract_mesh",
    "extract_textured_mesh", "render_views", "save_mesh", "write_turntable",
]
