"""Mesh export of a geometry (density field or surface): isosurface, decimation, UV unwrap + albedo bake or vertex
colours, atomic GLB/OBJ writing and a turntable preview of the written file."""

from dreamgen.export.io import export_mesh, save_mesh
from dreamgen.export.mesh import ExportConfig, decimate, extract_mesh
from dreamgen.export.texture import extract_textured_mesh
from dreamgen.export.turntable import render_views, write_turntable

__all__ = [
    "ExportConfig", "decimate", "export_mesh", "extract_mesh",
    "extract_textured_mesh", "render_views", "save_mesh", "write_turntable",
]
