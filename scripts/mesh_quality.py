"""Score exported meshes of runs whose prompt is a world caption against the true object (docs/export.md's table).

    python scripts/mesh_quality.py RUN_DIR[:MESH_FILE] ...   # MESH_FILE default mesh.glb, relative to RUN_DIR

For each mesh: faces, pieces, genus (Euler characteristic of the position-welded surface; '-' if it is not closed)
and the volumetric IoU against the exact object (``dreamgen.world``: the mesh's occupancy aligned to the object's by
centroid and radius of gyration, like ``dreamgen eval``). A mesh written in glTF's frame (asset.extras.up = +Y) is
moved back into the world frame with the transform recorded in its mesh extras; older files are taken as world-frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import trimesh
import yaml
from pygltflib import GLTF2

from dreamgen.export.cleanup import genus
from dreamgen.world import parse_caption
from dreamgen.world.metrics import align_by_occupancy, volumetric_iou


def world_mesh(path: Path) -> trimesh.Trimesh:
    """The mesh in dreamgen's world frame."""
    mesh = trimesh.load(path, force="mesh", process=False)
    gltf = GLTF2().load(str(path)) if path.suffix == ".glb" else None
    if gltf is not None and (gltf.asset.extras or {}).get("up") == "+Y":
        transform = np.asarray(gltf.meshes[0].extras["asset_from_world"])
        mesh.apply_transform(np.linalg.inv(transform))
    return mesh


def occupancy_lattice(mesh: trimesh.Trimesh, n: int = 256):
    """Inside/outside of a closed mesh on an n^3 lattice over its bounds, by the parity of surface crossings along
    z of each lattice column; returns occ_fn(points [N,3]) -> bool [N] (nearest lattice sample)."""
    lo, hi = mesh.bounds[0] - 0.02, mesh.bounds[1] + 0.02
    step = (hi - lo) / n
    tri = mesh.vertices[mesh.faces]
    xy = (tri[:, :, :2] - lo[:2]) / step[:2] - 0.5  # corners in column-index units (column i at index i)
    cmin = np.ceil(xy.min(1)).astype(int).clip(0, n)
    cmax = np.floor(xy.max(1)).astype(int).clip(-1, n - 1)
    toggles = np.zeros((n, n, n + 1), dtype=np.int32)
    for f in np.flatnonzero((cmax >= cmin).all(1)):
        i, j = np.meshgrid(np.arange(cmin[f, 0], cmax[f, 0] + 1), np.arange(cmin[f, 1], cmax[f, 1] + 1),
                           indexing="ij")
        p = np.stack([i.ravel(), j.ravel()], 1).astype(float)
        a, b, c = xy[f]
        den = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(den) < 1e-12:
            continue
        w0 = ((b[1] - c[1]) * (p[:, 0] - c[0]) + (c[0] - b[0]) * (p[:, 1] - c[1])) / den
        w1 = ((c[1] - a[1]) * (p[:, 0] - c[0]) + (a[0] - c[0]) * (p[:, 1] - c[1])) / den
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        z = w0 * tri[f, 0, 2] + w1 * tri[f, 1, 2] + w2 * tri[f, 2, 2]
        k = np.ceil((z - lo[2]) / step[2] - 0.5).astype(int).clip(0, n)  # first sample above the crossing
        np.add.at(toggles, (p[inside, 0].astype(int), p[inside, 1].astype(int), k[inside]), 1)
    occ = np.cumsum(toggles, axis=2)[:, :, :n] % 2 == 1
    occ_t = torch.from_numpy(occ)
    lo_t, step_t = torch.tensor(lo, dtype=torch.float32), torch.tensor(step, dtype=torch.float32)

    def occ_fn(points: torch.Tensor) -> torch.Tensor:
        idx = torch.floor((points.float() - lo_t) / step_t).long()
        ok = ((idx >= 0) & (idx < n)).all(-1)
        out = torch.zeros(len(points), dtype=torch.bool)
        i = idx[ok]
        out[ok] = occ_t[i[:, 0], i[:, 1], i[:, 2]]
        return out

    return occ_fn


def score(run_dir: Path, mesh_file: str) -> dict:
    prompt = yaml.safe_load((run_dir / "config.yaml").read_text())["prompt"]
    _, shape, _ = parse_caption(prompt)
    mesh = world_mesh(run_dir / mesh_file)
    points, weld = np.unique(mesh.vertices, axis=0, return_inverse=True)
    welded = trimesh.Trimesh(points, weld.reshape(-1)[mesh.faces], process=False)
    occ_fn = occupancy_lattice(mesh)
    iou = volumetric_iou(occ_fn, shape, align_by_occupancy(occ_fn, shape), resolution=64)
    return {"run": run_dir.name, "mesh": mesh_file, "shape": shape, "faces": len(mesh.faces),
            "pieces": len(welded.split(only_watertight=False)),
            "genus": genus(mesh), "volumetric_iou": round(iou, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR:MESH_FILE")
    for arg in parser.parse_args().runs:
        run_dir, _, mesh_file = arg.partition(":")
        print(json.dumps(score(Path(run_dir), mesh_file or "mesh.glb")))


if __name__ == "__main__":
    main()
