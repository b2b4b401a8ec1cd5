"""Writing meshes to disk atomically, so an interrupted export never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import trimesh

from dreamgen.errors import ConfigError
from dreamgen.export.mesh import FORMATS, DensityField, ExportConfig, extract_mesh


def save_mesh(mesh: trimesh.Trimesh, path: Path, fmt: str) -> Path:
    """Write ``mesh`` as ``fmt`` ("glb" or "obj", both with per-vertex colours) to ``path``.

    The file is written under a temporary name in the same directory and moved over ``path`` with ``os.replace``,
    so readers see either the previous file or the complete new one.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown mesh format {fmt!r}: must be one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp creates 0600; outputs are meant to be shared like any written file
            # glb: vertex colours become the COLOR_0 attribute; obj: the common "v x y z r g b" extension.
            mesh.export(file_obj=fh, file_type=fmt)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def export_mesh(geometry: DensityField, cfg: ExportConfig, out_dir: Path, stem: str = "mesh") -> dict[str, Path]:
    """Extract one mesh from ``geometry`` and write it as ``out_dir/{stem}.{fmt}`` for each of ``cfg.formats``."""
    mesh = extract_mesh(geometry, cfg)
    return {fmt: save_mesh(mesh, Path(out_dir) / f"{stem}.{fmt}", fmt) for fmt in cfg.formats}
