"""UV unwrapping (xatlas), a vectorised triangle rasteriser, and baking the albedo field into a texture atlas.

UV convention: trimesh's (and OBJ's), ``v`` points up, so texel row ``r`` of an ``H``-row image covers
``v`` in [1 - (r+1)/H, 1 - r/H]; trimesh flips ``v`` when it writes glTF, whose UV origin is the top-left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
import xatlas
from PIL import Image
from scipy import ndimage

from dreamgen.errors import DreamgenError
from dreamgen.export.mesh import ExportConfig, extract_surface, query_albedo
from dreamgen.geometry.base import DensityField, SurfaceField

# Candidate pixels tested per rasteriser batch: bounds memory (~200 bytes each) for huge triangles or images.
_BATCH_PIXELS = 1 << 19


@dataclass
class Unwrapped:
    """A mesh cut along its UV seams (vertices on a seam are duplicated), one UV per vertex."""

    vertices: np.ndarray  # [V,3] float64
    faces: np.ndarray  # [F,3] int64
    uv: np.ndarray  # [V,2] float64 in [0,1], v up


def unwrap(mesh: trimesh.Trimesh, texture_size: int, padding: int = 2, max_chart_area: float = 0.01) -> Unwrapped:
    """Charts and packs ``mesh`` into one square atlas sized for ``texture_size`` texels with ``padding`` between
    charts, no chart larger than ``max_chart_area`` times the surface area (0: no limit)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size  # texels_per_unit is then chosen so the charts fill about this resolution
    pack.padding = padding
    pack.bilinear = True  # leave room for bilinear taps at chart borders
    charts = xatlas.ChartOptions()
    # Capping chart size makes xatlas's chart growing several times faster on 50k-face marching-cubes meshes
    # (measured 1-2 s instead of 8-12 s) for a somewhat lower atlas utilisation.
    charts.max_chart_area = max_chart_area * float(mesh.area)
    atlas.generate(charts, pack)
    if atlas.atlas_count != 1:
        raise DreamgenError(f"xatlas packed the mesh into {atlas.atlas_count} atlases; expected one")
    vmapping, faces, uv = atlas[0]
    # xatlas's v grows downward from the image's top row; flip it to the v-up convention.
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float64)
    return Unwrapped(np.asarray(mesh.vertices)[vmapping.astype(np.int64)], faces.astype(np.int64), uv)


def uv_to_pixels(uv: np.ndarray, height: int, width: int) -> np.ndarray:
    """[...,2] v-up UV -> [...,2] image coordinates (x right, y down; pixel (r, c) has its centre at (c+.5, r+.5))."""
    return np.stack([uv[..., 0] * width, (1.0 - uv[..., 1]) * height], axis=-1)


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinearly filtered ``image`` [H,W,C] at v-up ``uv`` [N,2], edges clamped (glTF's LINEAR filter): [N,C] float."""
    height, width = image.shape[:2]
    xy = uv_to_pixels(uv, height, width) - 0.5  # continuous index space: texel (r, c) sits at (c, r)
    lo = np.floor(xy)
    frac = xy - lo
    c0, r0 = lo[:, 0].astype(np.int64), lo[:, 1].astype(np.int64)
    c0, c1 = np.clip(c0, 0, width - 1), np.clip(c0 + 1, 0, width - 1)
    r0, r1 = np.clip(r0, 0, height - 1), np.clip(r0 + 1, 0, height - 1)
    fx, fy = frac[:, :1], frac[:, 1:]
    img = image.astype(np.float64)
    top = img[r0, c0] * (1 - fx) + img[r0, c1] * fx
    bottom = img[r1, c0] * (1 - fx) + img[r1, c1] * fx
    return top * (1 - fy) + bottom * fy


def rasterize(
    xy: np.ndarray, height: int, width: int, inv_depth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each pixel centre, and where.

    ``xy``: [F,3,2] triangle corners in image coordinates (see ``uv_to_pixels``). ``inv_depth``: optional [F,3]
    1/depth at the corners; where triangles overlap the one with the largest interpolated 1/depth (the nearest)
    wins, otherwise the one with the lowest index. Returns ``face`` [H,W] int64 (-1: no triangle) and the
    screen-space barycentrics ``bary`` [H,W,3] float64 of the pixel centre in that triangle (0 where empty).
    A pixel centre on a shared edge counts as inside both triangles, so closed surfaces have no pinholes.
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = xy[..., 0], xy[..., 1]
    # Barycentric i of point p is the edge function of the opposite edge over the signed double area:
    # b_i(p) = a_i * px + b_i * py + c_i, affine in p, so each candidate pixel costs three multiply-adds per weight.
    x0, x1, x2, y0, y1, y2 = x[:, 0], x[:, 1], x[:, 2], y[:, 0], y[:, 1], y[:, 2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    # Pixel centres c + 0.5 inside [min, max]: columns ceil(min - .5) .. floor(max - .5), clipped to the image.
    cmin = np.clip(np.ceil(x.min(1) - 0.5), 0, width).astype(np.int64)
    cmax = np.clip(np.floor(x.max(1) - 0.5), -1, width - 1).astype(np.int64)
    rmin = np.clip(np.ceil(y.min(1) - 0.5), 0, height).astype(np.int64)
    rmax = np.clip(np.floor(y.max(1) - 0.5), -1, height - 1).astype(np.int64)
    proper = np.abs(area) > 1e-12  # degenerate triangles cover no pixel centre
    keep = np.flatnonzero(proper & (cmax >= cmin) & (rmax >= rmin))
    inv_area = np.divide(1.0, area, out=np.zeros_like(area), where=proper)
    coef = np.empty((len(xy), 3, 3))  # [F, corner, (a, b, c)]
    for i, (j, k) in enumerate(((1, 2), (2, 0), (0, 1))):
        coef[:, i, 0] = (y[:, j] - y[:, k]) * inv_area
        coef[:, i, 1] = (x[:, k] - x[:, j]) * inv_area
        coef[:, i, 2] = (x[:, j] * y[:, k] - x[:, k] * y[:, j]) * inv_area

    face = np.full(height * width, -1, dtype=np.int64)
    bary = np.zeros((height * width, 3))
    best = np.full(height * width, -np.inf)  # the winning candidate's priority: 1/depth, or -face index
    widths = cmax[keep] - cmin[keep] + 1
    counts = widths * (rmax[keep] - rmin[keep] + 1)
    ends = np.cumsum(counts)
    start = 0
    while start < len(keep):
        # As many triangles as fit in one batch of candidate pixels (always at least one).
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _BATCH_PIXELS, "right")), start + 1)
        sel, n = keep[start:stop], counts[start:stop]
        tri = np.repeat(sel, n)
        offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        w = np.repeat(widths[start:stop], n)
        col = cmin[tri] + offset % w
        row = rmin[tri] + offset // w
        c = coef[tri]
        b = c[:, :, 0] * (col + 0.5)[:, None] + c[:, :, 1] * (row + 0.5)[:, None] + c[:, :, 2]
        inside = (b >= -1e-9).all(axis=1)
        tri, b, pix = tri[inside], b[inside], (row * width + col)[inside]
        prio = (b * inv_depth[tri]).sum(1) if inv_depth is not None else -tri.astype(np.float64)
        # Z-buffer: the per-pixel maximum priority over this batch and the earlier ones (torch's scatter-max is
        # several times faster than sorting); candidates that reach it win (any one of exact ties).
        torch.from_numpy(best).scatter_reduce_(0, torch.from_numpy(pix), torch.from_numpy(prio), "amax")
        win = prio == best[pix]
        face[pix[win]], bary[pix[win]] = tri[win], b[win]
        start = stop
    return face.reshape(height, width), bary.reshape(height, width, 3)


def dilate(image: np.ndarray, filled: np.ndarray, pixels: int) -> np.ndarray:
    """Copy into every unfilled pixel within ``pixels`` (Euclidean) of a filled one that nearest filled pixel's value.

    Bilinear filtering and mipmapping at a chart's border read texels outside it; filling those with the chart's own
    colours keeps the background out of the rendered surface.
    """
    if pixels <= 0 or filled.all() or not filled.any():
        return image
    dist, (rows, cols) = ndimage.distance_transform_edt(~filled, return_indices=True)
    grow = ~filled & (dist <= pixels)
    out = image.copy()
    out[grow] = image[rows[grow], cols[grow]]
    return out


def bake_albedo(
    geometry: DensityField | SurfaceField, unwrapped: Unwrapped, size: int, dilation: int = 8,
    chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the albedo at the surface point of every texel centre covered by a UV triangle.

    Returns the ``size`` x ``size`` RGB texture (uint8, dilated by ``dilation`` texels; black elsewhere) and the
    boolean mask of texels covered by a triangle before dilation.
    """
    xy = uv_to_pixels(unwrapped.uv[unwrapped.faces], size, size)
    face, bary = rasterize(xy, size, size)
    covered = face >= 0
    corners = unwrapped.vertices[unwrapped.faces[face[covered]]]  # [N,3 corners,3]
    points = np.einsum("nk,nkd->nd", bary[covered], corners)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[covered] = np.round(query_albedo(geometry, points, chunk) * 255.0).astype(np.uint8)
    return dilate(image, covered, dilation), covered


def textured_mesh(unwrapped: Unwrapped, texture: np.ndarray) -> trimesh.Trimesh:
    """A trimesh whose PBR material samples ``texture`` (RGB uint8) as its base colour: dielectric, fully rough."""
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(texture, mode="RGB"), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=unwrapped.uv, material=material)
    # process=False: merging vertices would weld the two sides of every UV seam.
    return trimesh.Trimesh(unwrapped.vertices, unwrapped.faces, visual=visual, process=False)


def extract_textured_mesh(geometry: DensityField | SurfaceField, cfg: ExportConfig) -> trimesh.Trimesh:
    """``extract_surface``, unwrapped and with the albedo baked into a ``cfg.texture_size``-square texture.

    ``mesh.metadata`` carries ``density_threshold`` and ``texture_coverage`` (the fraction of texels on the surface).
    """
    surface = extract_surface(geometry, cfg)
    unwrapped = unwrap(surface, cfg.texture_size, cfg.texture_padding, cfg.texture_chart_area)
    texture, covered = bake_albedo(geometry, unwrapped, cfg.texture_size, cfg.texture_dilation, cfg.chunk)
    mesh = textured_mesh(unwrapped, texture)
    mesh.metadata.update(surface.metadata, texture_coverage=float(covered.mean()))
    return mesh
