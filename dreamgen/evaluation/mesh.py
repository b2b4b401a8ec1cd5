"""The exported asset against the exact object: what a user downloads, scored as a 3-D shape.

The GLB is read as a viewer reads it (glTF's +Y-up frame, its origin at the bottom centre) and rotated back into the
world's z-up frame; scale and position are then matched to the true object by occupancy moments (as for the NeRF,
:func:`dreamgen.world.metrics.align_by_occupancy`), since an asset's size and placement are free. Metrics:

- ``mesh_volumetric_iou``: IoU of the mesh's inside (exact ray-parity test) with the true occupancy on a 32³
  lattice over the object's bounding cube;
- ``chamfer``: mean of the two directed mean distances, result surface → true surface (|SDF| of the true object at
  points sampled on the mesh) and true surface → result surface (nearest mesh sample to points sampled on the true
  surface), in world units (the objects are ~0.7 across) after alignment;
- ``genus`` against the object's own (:data:`dreamgen.world.objects.GENUS`: the torus has one hole), None when the
  mesh is not closed; ``pieces``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from dreamgen.export.asset import GLTF_FROM_WORLD
from dreamgen.export.cleanup import genus
from dreamgen.export.turntable import load_as_viewer
from dreamgen.geometry.isosurface import inside_mesh
from dreamgen.world.captions import parse_caption
from dreamgen.world.metrics import align_by_occupancy, volumetric_iou
from dreamgen.world.objects import BOUND, GENUS, sdf

SURFACE_SAMPLES = 20_000


def world_mesh(path: Path) -> trimesh.Trimesh:
    """The asset at ``path`` (glb/obj) in the world's frame: glTF's rotation undone (its origin shift is left to the
    alignment)."""
    mesh = load_as_viewer(Path(path))
    return trimesh.Trimesh(np.asarray(mesh.vertices) @ GLTF_FROM_WORLD, mesh.faces, process=False)


def _true_surface(shape: str, n: int, resolution: int = 96) -> np.ndarray:
    """[n,3] points on the true object's surface (marching cubes of the exact SDF, area-uniform samples)."""
    axis = np.linspace(-BOUND, BOUND, resolution, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    values = sdf(shape, torch.from_numpy(grid)).numpy().reshape((resolution,) * 3)
    verts, faces, _, _ = marching_cubes(values, level=0.0)
    verts = verts * (2 * BOUND / (resolution - 1)) - BOUND
    points, _ = trimesh.sample.sample_surface(trimesh.Trimesh(verts, faces, process=False), n, seed=0)
    return np.asarray(points)


def evaluate_mesh(path: Path, prompt: str) -> dict:
    """Mesh metrics of the asset at ``path`` for ``prompt`` (a caption of the procedural world)."""
    _, shape, _ = parse_caption(prompt)
    mesh = world_mesh(path)
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)

    def occ(points: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(inside_mesh(verts, faces, points.cpu().numpy()))

    bound = float(np.abs(verts).max()) * 1.05
    alignment = align_by_occupancy(occ, shape, bound)
    offset = np.asarray(alignment.offset)
    # The mesh brought to the true object's scale and place: p_true = (p - offset) / scale.
    on_mesh, _ = trimesh.sample.sample_surface(mesh, SURFACE_SAMPLES, seed=0)
    on_mesh = (np.asarray(on_mesh) - offset) / alignment.scale
    to_true = np.abs(sdf(shape, torch.from_numpy(on_mesh).float()).numpy()).mean()
    to_mesh = cKDTree(on_mesh).query(_true_surface(shape, SURFACE_SAMPLES))[0].mean()
    g = genus(mesh)
    welded = trimesh.Trimesh(verts, faces, process=True)  # UV seams duplicate vertices: weld to count pieces
    return {
        "mesh_volumetric_iou": volumetric_iou(occ, shape, alignment),
        "chamfer": float(0.5 * (to_true + to_mesh)),
        "genus": g, "true_genus": GENUS.get(shape, 0), "genus_right": g == GENUS.get(shape, 0),
        "pieces": len(welded.split(only_watertight=False)), "faces": len(faces),
    }
