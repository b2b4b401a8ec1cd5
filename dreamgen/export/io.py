"""Writing meshes to disk atomically, so an interrupted export never leaves a truncated file behind, and the export
pipeline: extract (world frame), convert to the file's conventions (:mod:`dreamgen.export.asset`), write, preview."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import trimesh
from trimesh.exchange.obj import export_obj

from dreamgen.errors import ConfigError
from dreamgen.export.asset import asset_extras, finish_gltf_tree, to_gltf_frame, with_normals
from dreamgen.export.mesh import FORMATS, ExportConfig, extract_mesh
from dreamgen.geometry.base import DensityField, SurfaceField
from dreamgen.export.texture import extract_textured_mesh
from dreamgen.runs import atomic_path


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then move it over ``path``: readers see either the
    previous file or the complete new one."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def _obj_material(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """The textured ``mesh`` with its PBR material as an OBJ one named ``name`` (so its files are ``name.mtl``/
    ``name.png``): white Kd because viewers multiply map_Kd by it, no specular highlight (roughness 1)."""
    image = mesh.visual.material.baseColorTexture
    material = trimesh.visual.material.SimpleMaterial(
        image=image, diffuse=[255] * 4, ambient=[255] * 4, specular=[0, 0, 0, 255], glossiness=1.0, name=name
    )
    visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material)
    # Normals the mesh was given (with_normals) live in trimesh's cache; mesh.vertex_normals would invent others.
    normals = {"vertex_normals": mesh.vertex_normals} if "vertex_normals" in mesh._cache.cache else {}
    return trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False, **normals)


def save_mesh(mesh: trimesh.Trimesh, path: Path, fmt: str, extras: Mapping[str, Any] | None = None) -> Path:
    """Write ``mesh`` as ``fmt`` to ``path``, coordinates as they are (:func:`export_mesh` converts them first).

    glb: vertex colours become the COLOR_0 attribute, a texture the PBR material's baseColorTexture (embedded),
    vertex normals (when the mesh has them) NORMAL; bufferView targets and the texture sampler are set and
    ``extras`` becomes ``asset.extras``.
    obj: vertex colours use the common "v x y z r g b" extension, normals "vn"; a texture is written beside ``path``
    as ``<stem>.png`` with its ``<stem>.mtl``, both before the .obj that refers to them.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown mesh format {fmt!r}: must be one of {', '.join(FORMATS)}")
    path = Path(path)
    if fmt == "obj" and isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        text, files = export_obj(
            _obj_material(mesh, path.stem), include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl"
        )
        for name, data in files.items():
            write_atomic(path.parent / name, lambda fh, data=data: fh.write(data))
        return write_atomic(path, lambda fh: fh.write(text.encode()))
    options = {"tree_postprocessor": functools.partial(finish_gltf_tree, extras=extras)} if fmt == "glb" else {}
    return write_atomic(path, lambda fh: mesh.export(file_obj=fh, file_type=fmt, **options))


def export_mesh(geometry: DensityField | SurfaceField, cfg: ExportConfig, out_dir: Path, stem: str = "mesh",
                metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Extract one mesh from ``geometry`` and write it as ``out_dir/{stem}.{fmt}`` for each of ``cfg.formats``.

    Textured (``cfg.texture``) or vertex-coloured, in glTF's conventions (+Y up, front +Z, origin ``cfg.origin``,
    normals creased at ``cfg.crease_angle``). ``metadata`` (e.g. prompt, loss, seed, eval metrics) goes into the
    glTF's ``asset.extras``. With ``cfg.turntable_frames`` > 0 the first written file is loaded back and rendered
    around an orbit into ``turntable.gif`` (``{stem}-turntable.gif`` for another stem), returned under the key
    ``"turntable"``.
    """
    from dreamgen.export.turntable import write_turntable  # imported here: turntable uses this module's write_atomic

    out_dir = Path(out_dir)
    mesh = extract_textured_mesh(geometry, cfg) if cfg.texture else extract_mesh(geometry, cfg)
    asset = with_normals(to_gltf_frame(mesh, cfg.origin), cfg.crease_angle)
    extras = asset_extras(cfg.origin, metadata)
    paths = {fmt: save_mesh(asset, out_dir / f"{stem}.{fmt}", fmt, extras) for fmt in cfg.formats}
    if cfg.turntable_frames > 0:
        name = "turntable.gif" if stem == "mesh" else f"{stem}-turntable.gif"
        paths["turntable"] = write_turntable(
            paths[cfg.formats[0]], out_dir / name, n_frames=cfg.turntable_frames, resolution=cfg.turntable_resolution
        )
    return paths
