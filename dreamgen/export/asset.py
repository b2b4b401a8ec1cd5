"""The written file's conventions, the ones glTF viewers assume, and the glTF details trimesh's writer leaves out.

- Frame: +Y up, right-handed, metres (one world unit), the object's front facing +Z. dreamgen's world is Z-up with
  the front (azimuth 0, where the house has its door) facing +X (:mod:`dreamgen.cameras`).
- Origin: the bottom centre of the bounding box (the asset rests on y = 0) or its centre.
- Normals: smooth across the surface, UV seams included, split only at creases sharper than an angle.
- glTF: a texture sampler (trilinear, repeat), bufferView targets, and ``asset.extras`` with what made the asset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import dreamgen

ORIGINS = ("bottom", "center")

# World (x, y, z) -> glTF (X, Y, Z) = (y, z, x): world up (+z) becomes +Y, the front (+x) becomes +Z and world +y,
# on the right seen from the front, becomes +X, on the right of a glTF camera looking down -Z. A cyclic permutation
# of the axes is a rotation (det +1): handedness and face winding are kept.
GLTF_FROM_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

# glTF enums (the specification's WebGL constants).
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
# magFilter LINEAR, minFilter LINEAR_MIPMAP_LINEAR (trilinear), wrapS/wrapT REPEAT.
_SAMPLER = {"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}


def to_gltf_frame(mesh: trimesh.Trimesh, origin: str = "bottom") -> trimesh.Trimesh:
    """A copy of the world-frame ``mesh`` rotated into glTF's frame and moved so that the bottom centre
    (``origin="bottom"``) or the centre (``"center"``) of its bounding box is at 0.

    ``metadata["asset_from_world"]`` holds the 4x4 rigid transform applied (asset = R @ world + t).
    """
    if origin not in ORIGINS:
        raise ValueError(f"unknown origin {origin!r}: must be one of {', '.join(ORIGINS)}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64) @ GLTF_FROM_WORLD.T
    lo, hi = vertices.min(0), vertices.max(0)
    anchor = 0.5 * (lo + hi)
    if origin == "bottom":
        anchor[1] = lo[1]
    out = mesh.copy()
    out.vertices = vertices - anchor
    transform = np.eye(4)
    transform[:3, :3], transform[:3, 3] = GLTF_FROM_WORLD, -anchor
    out.metadata["asset_from_world"] = transform.tolist()
    return out


def _corner_angles(tri: np.ndarray) -> np.ndarray:
    """Interior angle at each corner of triangles [F,3,3] -> [F,3] radians (0 for degenerate corners)."""
    out = np.zeros(tri.shape[:2])
    for k in range(3):
        a, b = tri[:, (k + 1) % 3] - tri[:, k], tri[:, (k + 2) % 3] - tri[:, k]
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.divide(np.einsum("fd,fd->f", a, b), norms, out=np.ones(len(tri)), where=norms > 0)
        out[:, k] = np.arccos(np.clip(cos, -1.0, 1.0)) * (norms > 0)
    return out


def crease_normals(vertices: np.ndarray, faces: np.ndarray, crease_angle: float) -> tuple[np.ndarray, np.ndarray,
                                                                                            np.ndarray]:
    """Smooth vertex normals that stay sharp where two faces meet at more than ``crease_angle`` degrees.

    Vertices at the same position (e.g. the two sides of a UV seam) share one normal unless a crease separates them,
    so seams do not show in the shading. A vertex on a crease is split, one copy per smooth sheet around it.

    Returns ``(source, faces, normals)``: for each output vertex the input vertex it copies [V'], the faces
    re-indexed into the output vertices [F,3], and unit normals [V',3] (corner-angle-weighted face normals).
    """
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    n_faces = len(faces)
    _, weld = np.unique(vertices, axis=0, return_inverse=True)
    wf = weld.reshape(-1)[faces]  # faces over welded positions
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    lengths = np.linalg.norm(cross, axis=1, keepdims=True)
    face_normals = np.divide(cross, lengths, out=np.zeros_like(cross), where=lengths > 0)

    # Corners c = 3 f + k. Two corners are joined when they sit at the same welded vertex on either side of an edge
    # shared by exactly two faces whose normals differ by at most the crease angle; each connected group of corners
    # is one smooth sheet around its vertex.
    corner_a = np.arange(3 * n_faces).reshape(n_faces, 3)
    corner_b = np.roll(corner_a, -1, axis=1)  # the edge from corner k to corner k+1
    a, b = wf.reshape(-1), np.roll(wf, -1, axis=1).reshape(-1)
    key = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, ca, cb, va = key[order], corner_a.reshape(-1)[order], corner_b.reshape(-1)[order], a[order]
    same = (key[1:] == key[:-1]).all(axis=1)
    starts = np.flatnonzero(same)
    # Exactly two faces on the edge (a third would make it non-manifold: left sharp).
    manifold = starts[~np.isin(starts, starts + 1) & ~np.isin(starts + 1, starts)]
    i, j = manifold, manifold + 1
    fi, fj = ca[i] // 3, ca[j] // 3
    cos = np.einsum("nd,nd->n", face_normals[fi], face_normals[fj])
    smooth = cos >= math.cos(math.radians(crease_angle)) - 1e-9
    i, j = i[smooth], j[smooth]
    # Corner i's edge runs a -> b; the same welded vertex on edge j is j's start if the edges run the same way.
    aligned = va[i] == va[j]
    rows = np.concatenate([ca[i], cb[i]])
    cols = np.concatenate([np.where(aligned, ca[j], cb[j]), np.where(aligned, cb[j], ca[j])])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(3 * n_faces,) * 2)
    _, group = connected_components(graph, directed=False)

    weights = _corner_angles(tri).reshape(-1, 1) * np.repeat(face_normals, 3, axis=0)
    normals = np.zeros((group.max() + 1, 3))
    np.add.at(normals, group, weights)
    # A sheet of degenerate faces only has no direction of its own: it takes its vertex's over all its faces.
    vertex_sum = np.zeros((weld.max() + 1, 3))
    np.add.at(vertex_sum, wf.reshape(-1), weights)
    group_vertex = np.empty(len(normals), dtype=np.int64)
    group_vertex[group] = wf.reshape(-1)
    weak = np.linalg.norm(normals, axis=1) < 1e-12
    normals[weak] = vertex_sum[group_vertex[weak]]
    normals[np.linalg.norm(normals, axis=1) < 1e-12] = (0.0, 1.0, 0.0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)

    # One output vertex per (input vertex, sheet): UV seams (distinct input vertices) stay split too.
    pairs = np.stack([faces.reshape(-1), group], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], inverse.reshape(n_faces, 3), normals[unique[:, 1]]


def with_normals(mesh: trimesh.Trimesh, crease_angle: float) -> trimesh.Trimesh:
    """``mesh`` split along creases (:func:`crease_normals`) with its vertex normals set; UVs or vertex colours
    follow their vertices. Writers then store the normals (glTF NORMAL, OBJ vn)."""
    source, faces, normals = crease_normals(mesh.vertices, mesh.faces, crease_angle)
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        visual = trimesh.visual.TextureVisuals(uv=np.asarray(visual.uv)[source], material=visual.material)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.asarray(visual.vertex_colors)[source])
    return trimesh.Trimesh(np.asarray(mesh.vertices)[source], faces, vertex_normals=normals, visual=visual,
                           process=False, metadata=dict(mesh.metadata))


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf and no numpy scalars: the extras must still parse in every viewer."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def asset_extras(origin: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``asset.extras`` of an exported glTF: the dreamgen version and frame, plus ``metadata`` (e.g. prompt,
    loss, seed, eval metrics), which wins on equal keys."""
    extras = {"dreamgen_version": dreamgen.__version__, "up": "+Y", "front": "+Z", "units": "metres",
              "origin": origin}
    return _json_safe({**extras, **(metadata or {})})


def finish_gltf_tree(tree: dict, extras: Mapping[str, Any] | None = None) -> None:
    """Complete trimesh's glTF JSON in place: bufferView targets (index vs vertex data, which lets viewers upload
    them without guessing), one trilinear/repeat sampler for every texture, the generator and ``asset.extras``."""
    accessors, views = tree.get("accessors", []), tree.get("bufferViews", [])
    targets: dict[int, set[int]] = {}
    for mesh in tree.get("meshes", []):
        for prim in mesh["primitives"]:
            if "indices" in prim:
                targets.setdefault(accessors[prim["indices"]]["bufferView"], set()).add(_ELEMENT_ARRAY_BUFFER)
            for acc in prim["attributes"].values():
                targets.setdefault(accessors[acc]["bufferView"], set()).add(_ARRAY_BUFFER)
    for view, kinds in targets.items():
        if len(kinds) == 1:  # a view shared by indices and attributes (identical bytes) cannot have one target
            views[view]["target"] = kinds.pop()
    if tree.get("textures"):
        tree["samplers"] = [dict(_SAMPLER)]
        for texture in tree["textures"]:
            texture["sampler"] = 0
    tree["asset"]["generator"] = f"dreamgen {dreamgen.__version__} (trimesh {trimesh.__version__})"
    if extras:
        tree["asset"]["extras"] = dict(extras)
