"""Differentiable triangle rasterisation: pure PyTorch (CPU/CI) and nvdiffrast (CUDA), one interface.

``rasterize(verts, faces, cams)`` returns :class:`Fragments`: for every pixel covered by a triangle its face, its
perspective-correct barycentrics and view depth (differentiable in the vertex positions), plus a soft coverage image
whose gradient reaches the vertices at silhouettes.

Conventions: pixel coordinates are (column, row) with pixel centres at ``index + 0.5`` (as :func:`cameras.rays`); a
triangle is front-facing when its outward normal faces the camera, i.e. it is counter-clockwise as seen on screen
(``(x1−x0)(y2−y0) − (x2−x0)(y1−y0) < 0`` in (column, row) coordinates). The torch path rasterises front-facing
triangles only (the back faces of a closed mesh are hidden anyway).

Torch path, per camera:
1. Candidate (triangle, pixel) pairs from each triangle's pixel bounding box, so the cost is the summed box area
   (≈ covered pixels × depth complexity × a small factor), not pixels × faces.
2. A z-buffer (``scatter_reduce`` amin of the interpolated depth) over the pairs whose pixel centre is inside picks
   each pixel's triangle; barycentrics are then recomputed for the winners only, with autograd.
3. Soft coverage by analytic antialiasing with a box filter: a pair whose pixel square the triangle covers only in
   part contributes the exact area of triangle ∩ square (Sutherland–Hodgman clipping, differentiable in the
   vertices), a fully covered pixel contributes 1; coverage is the sum clamped to 1. Triangles that share an edge
   split its pixels exactly (no seams, even for the edge-on slivers at a silhouette), layers saturate in the
   interior (no gradient there), and at an outer silhouette the covered fraction moves with the vertices, so
   Σ coverage of a lone triangle is its area and d(Σ coverage)/dv is d(area)/dv. Pixels covered in part but with
   no triangle at the centre take the triangle covering most of them (barycentrics clamped onto it) so the renderer
   has a colour to blend. Occlusion edges between two overlapping surfaces get no gradient (both sides covered).

nvdiffrast path (``nvdiffrast.torch`` imports and the tensors are CUDA): ``dr.rasterize`` for faces/barycentrics and
``dr.antialias`` for coverage and for compositing (:meth:`Fragments.composite`), the same outputs.

Measured on one (shared) CPU thread: a 10k-face marching-tets sphere covering ~35% of two 64×64 views rasterises in
~60 ms forward + ~20 ms backward (128×128: ~110 + 45 ms); 23k faces at 64×64: ~50 ms for one view. Nearly every
triangle of such meshes is smaller than a pixel, so most pairs go through the clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dreamgen.cameras import Cameras

BACKENDS = ("auto", "torch", "nvdiffrast")
NEAR = 0.01  # view depth below which a triangle is dropped (no clipping)
FAR = 100.0  # only nvdiffrast's clip-space z uses it
_NVDR_CONTEXTS: dict = {}


@dataclass
class Fragments:
    """Rasterised pixels of a ``[B,H,W]`` batch, packed: entry ``n`` is pixel ``pixel[n]`` (b·H·W + row·W + col)."""

    batch: int
    height: int
    width: int
    pixel: Tensor  # [N] long, pixels with a triangle
    face: Tensor  # [N] long, the triangle drawn there
    bary: Tensor  # [N,3] perspective-correct barycentrics of face's vertices (differentiable)
    depth: Tensor  # [N] view depth (distance along the camera's −z), differentiable
    coverage: Tensor  # [B,H,W] soft coverage in [0,1]
    antialias: Callable[[Tensor], Tensor] | None = None  # nvdiffrast: antialias an image [B,H,W,C]

    def face_id(self) -> Tensor:
        """[B,H,W] long, −1 where no triangle."""
        ids = torch.full((self.batch * self.height * self.width,), -1, dtype=torch.long, device=self.face.device)
        ids[self.pixel] = self.face
        return ids.reshape(self.batch, self.height, self.width)

    def interpolate(self, attr: Tensor, faces: Tensor) -> Tensor:
        """Vertex attributes attr [V,C] (shared by the batch) or [B,V,C] -> per-fragment values [N,C]."""
        if attr.dim() == 2:
            corner = attr[faces[self.face]]  # [N,3,C]
        else:
            b = self.pixel // (self.height * self.width)
            corner = attr[b[:, None], faces[self.face]]
        return (self.bary[..., None] * corner).sum(1)

    def to_image(self, values: Tensor) -> Tensor:
        """values [N,C] -> [B,H,W,C], zeros where no triangle (differentiable in values)."""
        C = values.shape[-1]
        flat = values.new_zeros(self.batch * self.height * self.width, C).index_put((self.pixel,), values)
        return flat.reshape(self.batch, self.height, self.width, C)

    def composite(self, colour: Tensor, background: Tensor) -> Tensor:
        """colour, background [B,H,W,C] -> the antialiased image over the background."""
        if self.antialias is not None:
            hard = torch.zeros_like(self.coverage, dtype=torch.bool).reshape(-1)
            hard[self.pixel] = True
            hard = hard.reshape(self.coverage.shape)[..., None]
            return self.antialias(torch.where(hard, colour, background))
        cov = self.coverage[..., None]
        return cov * colour + (1.0 - cov) * background


def project(verts: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """World points verts [V,3] or [B,V,3] -> pixel coordinates xy [B,V,2] (column, row) and view depth w [B,V]."""
    B = len(cams)
    if verts.dim() == 2:
        verts = verts.expand(B, -1, -1)
    w2c = torch.linalg.inv(cams.c2w.to(verts.dtype))  # [B,4,4]
    p = torch.einsum("bij,bvj->bvi", w2c[:, :3, :3], verts) + w2c[:, None, :3, 3]  # [B,V,3]
    w = -p[..., 2]
    focal = (0.5 * cams.height / torch.tan(0.5 * cams.fov_y.to(verts.dtype)))[:, None]  # [B,1] pixels
    x = 0.5 * cams.width + focal * p[..., 0] / w
    y = 0.5 * cams.height - focal * p[..., 1] / w
    return torch.stack([x, y], dim=-1), w


def nvdiffrast_available() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or a build whose CUDA/GL libraries fail to load
        return False
    return True


def rasterize(verts: Tensor, faces: Tensor, cams: Cameras, backend: str = "auto") -> Fragments:
    """verts [V,3] or [B,V,3] world space, faces [F,3] long, cams (B cameras, cams.height × cams.width)."""
    if backend not in BACKENDS:
        raise ValueError(f"rasteriser backend must be one of {BACKENDS}, got {backend!r}")
    use_nvdr = backend == "nvdiffrast" or (backend == "auto" and verts.is_cuda and nvdiffrast_available())
    if backend == "nvdiffrast" and not (verts.is_cuda and nvdiffrast_available()):
        raise RuntimeError("rasteriser backend 'nvdiffrast' needs nvdiffrast installed and CUDA tensors")
    xy, w = project(verts, cams)
    if use_nvdr:
        return _rasterize_nvdiffrast(xy, w, faces, cams.height, cams.width)
    return rasterize_screen(xy, w, faces, cams.height, cams.width)


# Vertex i's opposite edge runs from vertex _NEXT[i] to vertex _PREV[i].
_NEXT, _PREV = (1, 2, 0), (2, 0, 1)


def _edge_functions(p: Tensor, tri: Tensor) -> Tensor:
    """p [...,2] pixel centres, tri [...,3,2] -> [...,3]: twice the signed area of (p, v_next(i), v_prev(i)), with the
    sign such that a front-facing triangle (clockwise in row-down pixel coordinates) has positive values inside."""
    a, b = tri[..., _NEXT, :], tri[..., _PREV, :]  # [...,3,2]
    pa, pb = a - p[..., None, :], b - p[..., None, :]
    return pb[..., 0] * pa[..., 1] - pa[..., 0] * pb[..., 1]


def _edge_lengths(tri: Tensor) -> Tensor:
    """tri [...,3,2] -> [...,3] length of the edge opposite each vertex."""
    return (tri[..., _PREV, :] - tri[..., _NEXT, :]).norm(dim=-1)


def rasterize_screen(xy: Tensor, w: Tensor, faces: Tensor, height: int, width: int) -> Fragments:
    """Torch rasteriser on projected vertices: xy [B,V,2] pixel coordinates (column, row), w [B,V] view depth
    (for perspective-correct barycentrics and the z-buffer; pass ones for an orthographic/screen-space setup)."""
    B, H, W = xy.shape[0], height, width
    dev = xy.device
    tri = xy[:, faces]  # [B,F,3,2]
    tri_w = w[:, faces]  # [B,F,3]
    with torch.no_grad():
        area = _edge_functions(tri[..., 0, :], tri)[..., 0]  # [B,F] twice the signed area (vertex 0's function)
        front = (area > 0) & (tri_w > NEAR).all(-1)
        # Pixels [c, c+1] overlapping the triangle's box: c ∈ [floor(min), floor(max)].
        lo = torch.floor(tri.amin(2)).clamp_min(0).long()  # [B,F,2]
        hi = torch.floor(tri.amax(2)).long()
        hi = torch.minimum(hi, torch.tensor([W - 1, H - 1], device=dev))
        extent = (hi - lo + 1).clamp_min(0)  # [B,F,2]
        count = torch.where(front, extent[..., 0] * extent[..., 1], 0).reshape(-1)  # [B*F]
        bf = count.nonzero().squeeze(-1)  # [K] flat (b, f) of candidate triangles
        count = count[bf]
        pair_bf = torch.repeat_interleave(bf, count)  # [P]
        local = torch.arange(pair_bf.shape[0], device=dev) - torch.repeat_interleave(count.cumsum(0) - count, count)
        box_w = extent.reshape(-1, 2)[pair_bf, 0]
        col = lo.reshape(-1, 2)[pair_bf, 0] + local % box_w
        row = lo.reshape(-1, 2)[pair_bf, 1] + local // box_w
        pix = ((pair_bf // faces.shape[0]) * H + row) * W + col  # [P]
        corner = torch.stack([col, row], -1).to(xy.dtype)  # [P,2] the pixel's min corner
        centre = corner + 0.5

        tri_p = tri.reshape(-1, 3, 2)[pair_bf]  # [P,3,2]
        e = _edge_functions(centre, tri_p)  # [P,3]
        # An edge function changes by at most half its |gradient|_1 between the centre and a corner.
        reach = 0.5 * (tri_p[..., _PREV, :] - tri_p[..., _NEXT, :]).abs().sum(-1)  # [P,3]
        full = (e >= reach).all(-1)  # the whole pixel square is inside
        partial = ~full & (e > -reach).all(-1)  # not entirely beyond one edge line
        inside = (e >= 0).all(-1)  # the centre is inside
        lam = e / area.reshape(-1)[pair_bf, None]
        z = 1.0 / (lam / tri_w.reshape(-1, 3)[pair_bf]).sum(-1)  # perspective-correct view depth

        n_pix = B * H * W
        zbuf = torch.full((n_pix,), float("inf"), device=dev, dtype=z.dtype)
        zbuf = zbuf.scatter_reduce(0, pix[inside], z[inside], "amin")
        hard = _argmax_pairs(pix, pair_bf, inside & (z == zbuf[pix]), n_pix)  # [n_pix] winning (b,f), −1 if none
        full_count = torch.zeros(n_pix, device=dev, dtype=xy.dtype).index_add(0, pix, full.to(xy.dtype))

    # Exact box-filter coverage of the partially covered pixels: area of triangle ∩ pixel square (differentiable).
    part = partial.nonzero().squeeze(-1)
    part_area = _clipped_area(tri.reshape(-1, 3, 2)[pair_bf[part]], corner[part])  # [Q] in pixels
    cov = full_count.index_add(0, pix[part], part_area).clamp(max=1.0)

    with torch.no_grad():
        # Silhouette fringe: pixels covered in part but with no triangle at the centre take the triangle covering
        # most of them (barycentrics clamped onto it), so the renderer has a colour to blend.
        a = part_area.detach()
        best = torch.zeros(n_pix, device=dev, dtype=a.dtype).scatter_reduce(0, pix[part], a, "amax")
        keep = torch.zeros_like(partial)
        keep[part] = (a > 0) & (a == best[pix[part]]) & (hard[pix[part]] < 0)
        chosen = torch.where(hard >= 0, hard, _argmax_pairs(pix, pair_bf, keep, n_pix))
        pixel = (chosen >= 0).nonzero().squeeze(-1)  # [N]
        chosen_bf = chosen[pixel]
        is_fringe = hard[pixel] < 0

    tri_n = tri.reshape(-1, 3, 2)[chosen_bf]  # [N,3,2]
    w_n = tri_w.reshape(-1, 3)[chosen_bf]  # [N,3]
    centre_n = torch.stack([pixel % W, (pixel // W) % H], -1).to(xy.dtype) + 0.5
    e_n = _edge_functions(centre_n, tri_n)
    lam = e_n / e_n.sum(-1, keepdim=True)  # screen-space barycentrics (Σ e = twice the area)
    lam = torch.where(is_fringe[:, None], lam.clamp_min(0.0), lam)
    lam = lam / lam.sum(-1, keepdim=True)  # fringe: clamped onto the triangle
    q = lam / w_n
    inv_depth = q.sum(-1)
    return Fragments(B, H, W, pixel, chosen_bf % faces.shape[0], q / inv_depth[:, None], 1.0 / inv_depth,
                     cov.reshape(B, H, W))


def _clipped_area(tri: Tensor, corner: Tensor) -> Tensor:
    """Area [Q] of each front-facing triangle tri [Q,3,2] inside its unit pixel square [corner, corner + 1]^2.

    Sutherland–Hodgman against the square's four sides, vectorised: polygons are fixed-width arrays whose unused
    slots repeat the last vertex (zero-length edges leave the shoelace sum unchanged).
    """
    poly = tri
    n = torch.full(tri.shape[:1], 3, dtype=torch.long, device=tri.device)
    for axis, offset, sign in ((0, 0.0, 1.0), (0, 1.0, -1.0), (1, 0.0, 1.0), (1, 1.0, -1.0)):
        poly, n = _clip_half_plane(poly, sign * (poly[..., axis] - (corner[:, None, axis] + offset)))
    x, y = poly[..., 0], poly[..., 1]
    shoelace = (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(-1)
    return torch.where(n >= 3, -0.5 * shoelace, 0.0)  # front-facing is negative in (column, row) coordinates


def _clip_half_plane(poly: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Clip polygons poly [Q,M,2] to s ≥ 0 (s [Q,M] signed value of each vertex) -> [Q,M+1,2] and vertex counts."""
    Q, M = s.shape
    s_next, p_next = s.roll(-1, 1), poly.roll(-1, 1)
    keep = s >= 0
    crosses = keep != (s_next >= 0)
    t = s / torch.where(crosses, s - s_next, torch.ones_like(s))
    hit = poly + t[..., None] * (p_next - poly)
    cand = torch.stack([poly, hit], 2).reshape(Q, 2 * M, 2)  # each vertex, then its edge's crossing
    valid = torch.stack([keep, crosses], 2).reshape(Q, 2 * M)
    count = valid.sum(-1)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, : M + 1]  # valid slots first, in order
    slot = torch.minimum(torch.arange(M + 1, device=s.device), (count - 1).clamp_min(0)[:, None])
    idx = order.gather(1, slot)  # past the count: repeat the last valid vertex
    return cand.gather(1, idx[..., None].expand(Q, M + 1, 2)), count


def _argmax_pairs(pix: Tensor, pair_bf: Tensor, keep: Tensor, n_pix: int) -> Tensor:
    """Per pixel the largest (b,f) among the kept pairs (a deterministic tie-break), −1 where none is kept."""
    out = torch.full((n_pix,), -1, dtype=torch.long, device=pix.device)
    return out.scatter_reduce(0, pix[keep], pair_bf[keep], "amax")


def _rasterize_nvdiffrast(xy: Tensor, w: Tensor, faces: Tensor, height: int, width: int) -> Fragments:
    """The same fragments from nvdiffrast (CUDA). Its first image row is clip y = −1, so rows map to y_ndc upward."""
    import nvdiffrast.torch as dr

    B, H, W = xy.shape[0], height, width
    x_ndc = 2.0 * xy[..., 0] / W - 1.0
    y_ndc = 2.0 * xy[..., 1] / H - 1.0
    z_clip = (FAR + NEAR) / (FAR - NEAR) * w - 2.0 * FAR * NEAR / (FAR - NEAR)
    clip = torch.stack([x_ndc * w, y_ndc * w, z_clip, w], dim=-1).float().contiguous()  # [B,V,4]
    tris = faces.int().contiguous()
    ctx = _NVDR_CONTEXTS.get(xy.device)
    if ctx is None:
        ctx = _NVDR_CONTEXTS[xy.device] = dr.RasterizeCudaContext(device=xy.device)
    rast, _ = dr.rasterize(ctx, clip, tris, (H, W))  # [B,H,W,4]: u, v, z/w, triangle id + 1
    tri_id = rast[..., 3].long().reshape(-1) - 1
    pixel = (tri_id >= 0).nonzero().squeeze(-1)
    face = tri_id[pixel]
    uv = rast[..., :2].reshape(-1, 2)[pixel]
    bary = torch.cat([uv, 1.0 - uv.sum(-1, keepdim=True)], dim=-1).to(xy.dtype)  # nvdiffrast: u·a0 + v·a1 + …
    b = pixel // (H * W)
    depth = (bary * w[b[:, None], faces[face]]).sum(-1)  # view depth is linear in 3-D: exact when interpolated
    mask = (rast[..., 3:] > 0).float()
    coverage = dr.antialias(mask, rast, clip, tris)[..., 0].to(xy.dtype)

    def antialias(image: Tensor) -> Tensor:
        return dr.antialias(image.float().contiguous(), rast, clip, tris).to(image.dtype)

    return Fragments(B, H, W, pixel, face, bary, depth, coverage, antialias)
