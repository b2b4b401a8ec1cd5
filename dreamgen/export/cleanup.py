"""Cleanup of an extracted surface: what a user wants from an optimised field before using it as an asset.

On the density lattice, before marching cubes: open it morphologically (drop drips and spikes thinner than a few
lattice cells), keep the largest solid piece (drop floaters, fill internal cavities) and close it (fill tunnels, rings
and cracks narrower than a few cells, and hollows behind narrow mouths). On the mesh: fill small holes and smooth the
marching-cubes stair-steps away with Taubin's volume-preserving filter.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from scipy.sparse import coo_matrix, diags

# Taubin's λ|μ pair: a shrinking step then a slightly larger inflating one, a low-pass filter that keeps the volume.
TAUBIN_LAMBDA, TAUBIN_MU = 0.5, -0.53


def _morphology(mask: np.ndarray, radius: float, closing: bool) -> np.ndarray:
    """Closing (``closing=True``) or opening of ``mask`` with a Euclidean ball of ``radius`` cells, by two distance
    transforms (exact, and cheaper than iterated binary morphology). The mask is padded so that the lattice's bound
    does not clip the intermediate dilation or erosion."""
    pad = int(np.ceil(radius)) + 1
    m = np.pad(mask, pad)
    dilate = lambda a: ndimage.distance_transform_edt(~a) <= radius  # noqa: E731
    erode = lambda a: ndimage.distance_transform_edt(a) > radius  # noqa: E731
    if closing:
        out = erode(dilate(m))
    else:
        eroded = erode(m)
        out = dilate(eroded) if eroded.any() else m  # nothing is thicker than the ball: keep it rather than erase it
    return out[pad:-pad, pad:-pad, pad:-pad]


def clean_lattice(grid: np.ndarray, level: float, solid: bool = True, opening_radius: float = 0.0,
                  closing_radius: float = 0.0) -> np.ndarray:
    """A copy of the density lattice ``grid`` whose ``> level`` set is cleaned, for marching cubes at ``level``.

    In order (radii in lattice cells, 0 = off):
    ``opening_radius``: morphological opening with a Euclidean ball, which removes every part the ball cannot
    reach into: drips, spikes, fins and bridges thinner than about twice the radius.
    ``solid``: keep only the largest 26-connected occupied piece (floaters go) and fill the cavities inside it.
    ``closing_radius``: morphological closing, which fills every gap the ball cannot enter: tunnels, rings and
    cracks narrower than about twice the radius; and hollows whose mouths are narrower than about four times it
    (optimised fields are often hollow shells with pores), mouths included.

    Only samples that change side are edited, each reflected through the level (``2 level - value``): elsewhere the
    surface stays exactly where the field puts it, and a filled gap gets the smooth, halfway surface of a blurred
    indicator rather than a staircase.
    """
    inside = grid > level
    kept = inside.copy()
    # The outermost samples count as empty, as they do for isosurface (which closes the surface there).
    kept[[0, -1], :, :] = kept[:, [0, -1], :] = kept[:, :, [0, -1]] = False
    if opening_radius > 0 and kept.any():
        kept = _morphology(kept, opening_radius, closing=False)
    if solid and kept.any():
        labels, _ = ndimage.label(kept, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.reshape(-1))
        sizes[0] = 0
        kept = ndimage.binary_fill_holes(labels == sizes.argmax())
    if closing_radius > 0 and kept.any():
        # A hollow reached only through narrow mouths is a cavity once a closing twice as large seals them: it is
        # filled, with the plugs that seal it. A through-hole that only the larger closing fills (a torus's) is left.
        kept = _morphology(kept, closing_radius, closing=True)
        sealed = _morphology(kept, 2 * closing_radius, closing=True)
        hollow = ndimage.binary_fill_holes(sealed) & ~sealed
        if hollow.any():
            kept |= hollow | (sealed & (ndimage.distance_transform_edt(~hollow) <= 2 * closing_radius + 1))
    out = grid.astype(np.float64)
    flip = kept != inside
    flip[[0, -1], :, :] = flip[:, [0, -1], :] = flip[:, :, [0, -1]] = False  # isosurface empties the border itself
    out[flip] = 2.0 * level - out[flip]
    return out


def _welded(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique positions [W,3], faces over them [F,3], weld index of each vertex [V])."""
    unique, weld = np.unique(np.asarray(mesh.vertices), axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    return unique, weld[np.asarray(mesh.faces)], weld


def taubin_smooth(mesh: trimesh.Trimesh, iterations: int) -> trimesh.Trimesh:
    """``mesh`` with ``iterations`` Taubin λ|μ passes of the umbrella Laplacian (vertices at the same position move
    together, so duplicated vertices never tear apart)."""
    if iterations <= 0 or len(mesh.faces) == 0:
        return mesh
    points, faces, weld = _welded(mesh)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = len(points)
    rows, cols = np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]]
    adjacency = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    degree = np.asarray(adjacency.sum(axis=1)).reshape(-1)
    average = diags(1.0 / np.maximum(degree, 1.0)) @ adjacency  # neighbours' mean
    for _ in range(iterations):
        for factor in (TAUBIN_LAMBDA, TAUBIN_MU):
            points = points + factor * (average @ points - points)
    out = mesh.copy()
    out.vertices = points[weld]
    return out


def _boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed loops of boundary edges (edges of one face), each as vertex indices in the faces' edge direction.
    Loops through a vertex with more than two boundary edges are skipped: their traversal is ambiguous."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse.reshape(-1)] == 1]
    if len(boundary) == 0:
        return []
    starts, uses = np.unique(boundary[:, 0], return_counts=True)
    ambiguous = set(starts[uses > 1].tolist())
    following = {int(a): int(b) for a, b in boundary if a not in ambiguous}
    loops, seen = [], set()
    for start in list(following):
        if start in seen:
            continue
        loop, v = [], start
        while v in following and v not in seen:
            seen.add(v)
            loop.append(v)
            v = following[v]
        if v == start and len(loop) >= 3:
            loops.append(np.asarray(loop))
    return loops


def fill_holes(mesh: trimesh.Trimesh, max_edges: int) -> trimesh.Trimesh:
    """``mesh`` with every hole (boundary loop) of at most ``max_edges`` edges closed by a fan of triangles around
    the loop's centroid, wound like the surrounding faces. Larger openings are left alone: they may be intended."""
    if max_edges <= 0 or len(mesh.faces) == 0:
        return mesh
    points, faces, weld = _welded(mesh)
    loops = [loop for loop in _boundary_loops(faces) if len(loop) <= max_edges]
    if not loops:
        return mesh
    vertices, new_faces = [np.asarray(mesh.vertices)], [np.asarray(mesh.faces)]
    # One vertex of the input per welded position, to attach the fans to.
    representative = np.empty(len(points), dtype=np.int64)
    representative[weld] = np.arange(len(weld))
    count = len(mesh.vertices)
    for loop in loops:
        # The hole's edges run b -> a in the new faces: the reverse of the surrounding faces' a -> b.
        ring = representative[loop]
        vertices.append(points[loop].mean(axis=0, keepdims=True))
        new_faces.append(np.stack([np.roll(ring, -1), ring, np.full(len(ring), count)], axis=1))
        count += 1
    return trimesh.Trimesh(np.concatenate(vertices), np.concatenate(new_faces), process=False,
                           metadata=dict(mesh.metadata))


def genus(mesh: trimesh.Trimesh) -> int | None:
    """Total genus of a closed surface from its Euler characteristic, per piece V - E + F = 2 - 2g (vertices
    welded by position); None if the surface is not closed, where genus is undefined."""
    points, faces, _ = _welded(mesh)
    welded = trimesh.Trimesh(points, faces, process=False)
    if not welded.is_watertight:
        return None
    euler = len(np.unique(faces)) - len(welded.edges_unique) + len(faces)  # unused vertices do not count
    pieces = len(welded.split(only_watertight=False))
    return (2 * pieces - euler) // 2
