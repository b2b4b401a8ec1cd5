"""Evaluation of a text-to-3D result against the procedural world's ground truth.

The result is seen only through two callables, so any representation plugs in:
- ``render_fn(cams) -> (rgb [B,H,W,3] in [0,1], opacity [B,H,W])``; its foreground mask is opacity > 0.5.
- optionally ``occ_fn(points [N,3]) -> [N]`` bool or float; a float counts as occupied where > 0.5 (for a NeRF,
  pass e.g. ``lambda p: density(p) > threshold``).

Scale and position. A result is not at the ground truth's exact scale or centre, so every comparison first finds an
:class:`Alignment` (result ≈ scale · GT + offset) and then renders the result with the GT cameras mapped by it
(:func:`transform_cameras`): scaling the scene and the camera centres by the same factor leaves the image unchanged,
so the aligned render is the image the GT cameras would see of the result brought back to GT scale. The alignment
comes from 3-D occupancy moments when ``occ_fn`` is given (centroid and radius of gyration of the occupied grid
cells matched to the GT's), otherwise from the silhouettes (a few rounds of matching the mask areas, which fixes the
scale, and the mask centroids over all views, which fixes the 3-D offset by least squares). Rotation is not
aligned: the result must face its front to +x, which is what the prompt's view conditioning asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import Tensor

from dreamgen.cameras import CameraConfig, CameraSampler, Cameras, make_cameras, wrap_degrees
from dreamgen.world.captions import parse_caption
from dreamgen.world.objects import (BOUND, FRONT_FEATURE_SHAPES, PAINTED_FRONT_SHAPES, SHAPES, albedo,
                                    nearest_surface_point, occupancy)
from dreamgen.world.render import render

RenderFn = Callable[[Cameras], tuple[Tensor, Tensor]]
OccFn = Callable[[Tensor], Tensor]
PaintFn = Callable[[Tensor], Tensor]  # points [N,3] -> albedo [N,3]
RepaintFn = Callable[[Cameras, PaintFn], tuple[Tensor, Tensor]]  # render_fn with the result's albedo replaced


@dataclass
class Alignment:
    """Result ≈ scale · GT + offset (world units)."""

    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


def transform_cameras(cams: Cameras, scale: float, offset: tuple[float, float, float] | Tensor) -> Cameras:
    """Move camera centres by p -> scale · p + offset, keeping orientation and fov."""
    c2w = cams.c2w.clone()
    c2w[:, :3, 3] = scale * c2w[:, :3, 3] + torch.as_tensor(offset, dtype=c2w.dtype, device=c2w.device)
    return replace(cams, c2w=c2w, distance=cams.distance * scale)


def _grid(bound: float, resolution: int, jitter: bool = False) -> Tensor:
    """Cell centres of a resolution³ grid over [−bound, bound]³ -> [R³,3]; jitter=True draws one point uniformly in
    each cell instead (fixed seed), which makes moments free of the grid's quantisation bias."""
    x = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 * bound - bound
    pts = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), dim=-1).reshape(-1, 3)
    if jitter:
        g = torch.Generator().manual_seed(0)
        pts = pts + (torch.rand(pts.shape, generator=g) - 0.5) * (2 * bound / resolution)
    return pts


def _occupied(occ_fn: OccFn, points: Tensor, chunk: int = 1 << 16) -> Tensor:
    """occ_fn on [N,3] in chunks -> bool [N] on the CPU."""
    out = []
    with torch.no_grad():
        for part in points.split(chunk):
            v = torch.as_tensor(occ_fn(part)).detach().cpu().reshape(-1)
            out.append(v if v.dtype == torch.bool else v.float() > 0.5)
    return torch.cat(out)


def _moments(points: Tensor, occ: Tensor) -> tuple[Tensor, float] | None:
    """Centroid [3] and radius of gyration of the occupied points, None if nothing is occupied."""
    if not occ.any():
        return None
    p = points[occ]
    centre = p.mean(0)
    return centre, float(((p - centre) ** 2).sum(-1).mean().sqrt())


@lru_cache(maxsize=None)
def _gt_moments(shape: str, bound: float, resolution: int) -> tuple[Tensor, float]:
    # The same jittered points as the result's, so a result identical to the GT aligns exactly.
    pts = _grid(bound, resolution, jitter=True)
    m = _moments(pts, occupancy(shape, pts))
    assert m is not None
    return m


def occupancy_moments(occ_fn: OccFn, bound: float = 1.0, resolution: int = 48) -> tuple[Tensor, float] | None:
    """Centroid [3] and radius of gyration of occ_fn's occupied cells in [−bound, bound]³ (None if empty)."""
    pts = _grid(bound, resolution, jitter=True)
    return _moments(pts, _occupied(occ_fn, pts))


def align_by_occupancy(occ_fn: OccFn, shape: str, bound: float = 1.0, resolution: int = 48,
                       moments: tuple[Tensor, float] | None = None) -> Alignment:
    """Match the centroid and radius of gyration of the result's occupancy to the GT's. ``moments`` (from
    :func:`occupancy_moments` with the same bound/resolution) skips re-evaluating occ_fn."""
    m = moments or occupancy_moments(occ_fn, bound, resolution)
    if m is None:
        return Alignment()
    centre, radius = m
    gt_centre, gt_radius = _gt_moments(shape, bound, resolution)
    scale = radius / gt_radius
    return Alignment(scale, tuple((centre - scale * gt_centre).tolist()))


def _render_result(render_fn: RenderFn, cams: Cameras, alignment: Alignment) -> tuple[Tensor, Tensor]:
    """The result's rgb [B,H,W,3] and mask [B,H,W] bool seen by the GT cameras after alignment."""
    with torch.no_grad():
        rgb, opacity = render_fn(transform_cameras(cams, alignment.scale, alignment.offset))
    return rgb.detach().float().cpu(), opacity.detach().float().cpu() > 0.5


def _render_once(render_fn: RenderFn) -> RenderFn:
    """``render_fn`` remembering its renders by camera set (pose, fov, size)."""
    cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def render_cached(cams: Cameras) -> tuple[Tensor, Tensor]:
        key = tuple(t.detach().cpu().numpy().tobytes() for t in (cams.c2w, cams.fov_y)) + (cams.height, cams.width)
        if key not in cache:
            cache[key] = render_fn(cams)
        return cache[key]

    return render_cached


def align_by_silhouette(render_fn: RenderFn, shape: str, cams: Cameras, rounds: int = 3,
                        mask_gt: Tensor | None = None) -> Alignment:
    """Scale from the median ratio of mask areas, 3-D offset from the mask centroids' displacements (least squares
    over views: a shift Δ moves the projection by (right·Δ, up·Δ) · focal / depth pixels), iterated ``rounds`` times.
    cams should see the object from several azimuths (e.g. an orbit)."""
    if mask_gt is None:
        mask_gt = render(shape, "red", cams)[1]
    _, H, W = mask_gt.shape
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    focal = 0.5 * H / torch.tan(0.5 * cams.fov_y.cpu())  # [B]
    right, up = cams.c2w[:, :3, 0].cpu(), cams.c2w[:, :3, 1].cpu()
    scale, offset = 1.0, torch.zeros(3)
    for _ in range(rounds):
        mask = _render_result(render_fn, cams, Alignment(scale, tuple(offset.tolist())))[1]
        a_pred, a_gt = mask.flatten(1).sum(1).float(), mask_gt.flatten(1).sum(1).float()
        ok = (a_pred > 0) & (a_gt > 0)
        if not ok.any():
            break
        # Centroid displacements (pixels) at the current scale, then the 3-D shift that explains them.
        du = (mask * u).flatten(1).sum(1) / a_pred.clamp(min=1) - (mask_gt * u).flatten(1).sum(1) / a_gt.clamp(min=1)
        dv = (mask * v).flatten(1).sum(1) / a_pred.clamp(min=1) - (mask_gt * v).flatten(1).sum(1) / a_gt.clamp(min=1)
        depth = cams.distance.cpu() * scale
        A = torch.cat([right[ok], up[ok]])  # [2K,3]
        b = torch.cat([du[ok] * depth[ok] / focal[ok], -dv[ok] * depth[ok] / focal[ok]])  # image v points down
        offset = offset + torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
        # A result s× larger covers s² the area: move the cameras s× further out.
        scale *= float((a_pred[ok] / a_gt[ok]).median().sqrt())
    return Alignment(scale, tuple(offset.tolist()))


def silhouette_iou(mask_pred: Tensor, mask_gt: Tensor) -> float:
    """Mean over views of |pred ∩ gt| / |pred ∪ gt|; masks [B,H,W] bool (a view where both are empty scores 1)."""
    inter = (mask_pred & mask_gt).flatten(1).sum(1).float()
    union = (mask_pred | mask_gt).flatten(1).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())


def colour_errors(rgb_pred: Tensor, mask_pred: Tensor, rgb_gt: Tensor, mask_gt: Tensor) -> list[float | None]:
    """Per view: mean absolute RGB difference between the mean foreground colours (None where the GT shows nothing).

    Each image's mean colour is taken over its own mask, so the measure ignores small misalignments and compares
    what colour the object is, shading included. A view where the result shows nothing scores 1 (the maximum).
    rgb: [B,H,W,3] in [0,1], masks: [B,H,W] bool.
    """
    return [None if not mg.any() else 1.0 if not mp.any() else float((rp[mp].mean(0) - rg[mg].mean(0)).abs().mean())
            for rp, mp, rg, mg in zip(rgb_pred, mask_pred, rgb_gt, mask_gt)]


def foreground_colour_error(rgb_pred: Tensor, mask_pred: Tensor, rgb_gt: Tensor, mask_gt: Tensor) -> float:
    """:func:`colour_errors` averaged over the views with a GT foreground."""
    errs = [e for e in colour_errors(rgb_pred, mask_pred, rgb_gt, mask_gt) if e is not None]
    return sum(errs) / len(errs) if errs else 0.0


def arc_cameras(centre: float, n_views: int = 4, resolution: int = 64, camera_cfg: CameraConfig | None = None,
                spread: float = 60.0) -> Cameras:
    """n_views cameras at the eval elevation/distance/fov with azimuths spread over centre ± spread/2 (degrees)."""
    cfg = camera_cfg or CameraConfig()
    az = centre + (torch.linspace(-spread / 2, spread / 2, n_views) if n_views > 1 else torch.zeros(1))
    full = lambda x: torch.full((n_views,), float(x))  # noqa: E731
    return make_cameras(wrap_degrees(az), full(cfg.eval_elevation), full(cfg.eval_distance), full(cfg.eval_fov),
                        resolution, cfg)


def back_cameras(n_views: int = 4, resolution: int = 64, camera_cfg: CameraConfig | None = None,
                 spread: float = 60.0) -> Cameras:
    """Back views: azimuths 180° ± spread/2."""
    return arc_cameras(180.0, n_views, resolution, camera_cfg, spread)


def front_cameras(n_views: int = 4, resolution: int = 64, camera_cfg: CameraConfig | None = None,
                  spread: float = 60.0) -> Cameras:
    """Front views: azimuths 0° ± spread/2."""
    return arc_cameras(0.0, n_views, resolution, camera_cfg, spread)


def true_paint_on_result(shape: str, colour: str, alignment: Alignment, variant: str = "true") -> PaintFn:
    """The true object's paint (or a variant's) carried onto the result's own surface: a point of the result [N,3]
    takes the albedo of the nearest point of the true surface, found in the GT frame through ``alignment``."""
    def paint(points: Tensor) -> Tensor:
        q = (points - points.new_tensor(alignment.offset)) / alignment.scale
        return albedo(shape, colour, nearest_surface_point(shape, q), variant)

    return paint


def _closer_to_true(render_fn: RenderFn, colour: str, shape: str, cams: Cameras, alignment: Alignment | None,
                    other: str, feature_threshold: float, repaint_fn: RepaintFn | None = None
                    ) -> tuple[list[bool], list[float]]:
    """Per view, over the pixels where the true reference and its ``other`` variant differ: is the result closer to
    the true one than to the variant? Returns (verdicts, soft = e_other / (e_true + e_other)) for the views where
    the references differ at all.

    The references are the true object and the variant (their geometry and paint) — or, with ``repaint_fn``, the
    result's own surface painted with the true object's and the variant's paint (:func:`true_paint_on_result`), so
    that where the result's shape is wrong the two references are wrong alike and only the paint decides.
    Only pixels where the two references differ by more than ``feature_threshold`` (max over channels) are compared
    (mean |Δrgb|). The result's render is first brought to the reference's brightness by one scalar gain (ratio of
    mean luminance over the pixels that both cover outside that region), so an exposure or shading difference does
    not decide the vote.
    """
    if shape not in FRONT_FEATURE_SHAPES:
        raise ValueError(f"the front/Janus scores need a shape with a front ({', '.join(FRONT_FEATURE_SHAPES)}), "
                         f"got {shape!r}")
    alignment = alignment or Alignment()
    rgb, mask = _render_result(render_fn, cams, alignment)
    if repaint_fn is None:
        ref_true, mask_gt, _ = render(shape, colour, cams)
        ref_other = render(shape, colour, cams, variant=other)[0]
    else:
        if shape not in PAINTED_FRONT_SHAPES:
            raise ValueError(f"only a painted front ({', '.join(PAINTED_FRONT_SHAPES)}) can be repainted, "
                             f"got {shape!r}")
        moved = transform_cameras(cams, alignment.scale, alignment.offset)
        ref_true, ref_other = (repaint_fn(moved, true_paint_on_result(shape, colour, alignment, v))[0].detach()
                               .float().cpu() for v in ("true", other))
        mask_gt = mask
    lum = torch.tensor([0.299, 0.587, 0.114])
    verdicts, soft = [], []
    for k in range(len(cams)):
        region = (ref_true[k] - ref_other[k]).abs().amax(-1) > feature_threshold  # [H,W]
        if not region.any():
            continue
        rest = mask_gt[k] & mask[k] & ~region
        gain = (ref_true[k][rest] @ lum).mean() / (rgb[k][rest] @ lum).mean().clamp(min=1e-3) if rest.any() else 1.0
        pred = (rgb[k] * gain).clamp(0, 1)[region]
        e_true = float((pred - ref_true[k][region]).abs().mean())
        e_other = float((pred - ref_other[k][region]).abs().mean())
        verdicts.append(e_true <= e_other)
        soft.append(e_other / max(e_true + e_other, 1e-8))
    return verdicts, soft


def janus_score(render_fn: RenderFn, colour: str, shape: str = "house", alignment: Alignment | None = None,
                n_views: int = 4, resolution: int = 64, camera_cfg: CameraConfig | None = None,
                feature_threshold: float = 0.15, repaint_fn: RepaintFn | None = None) -> dict:
    """Fraction of back views in which the result shows the object's front feature (door, screen, arrow head).

    From each back camera (:func:`back_cameras`, 180° ± 30°) two references are rendered: the true object (its
    back) and its ``two_faced`` variant (its front half mirrored onto the back, :mod:`dreamgen.world.objects`). A
    view is flagged when, where the two differ, the result is closer to ``two_faced`` than to the truth (see
    :func:`_closer_to_true` for the comparison and its gain normalisation). With ``repaint_fn`` (a painted front:
    the house, the tv) both references are the result's own surface in the two paints: the Janus score on the
    result's shape, which a wrong shape cannot decide.

    Returns {"score": flagged fraction in [0,1], "flags": [K] bool, "soft": [K] e_true / (e_true + e_two_faced)}.
    """
    cams = back_cameras(n_views, resolution, camera_cfg)
    true, soft = _closer_to_true(render_fn, colour, shape, cams, alignment, "two_faced", feature_threshold,
                                 repaint_fn)
    flags = [not v for v in true]
    return {"score": sum(flags) / max(len(flags), 1), "flags": flags, "soft": [1.0 - s for s in soft]}


def front_feature_score(render_fn: RenderFn, colour: str, shape: str = "house", alignment: Alignment | None = None,
                        n_views: int = 4, resolution: int = 64, camera_cfg: CameraConfig | None = None,
                        feature_threshold: float = 0.15, repaint_fn: RepaintFn | None = None) -> dict:
    """Fraction of front views in which the result shows the object's front feature (door, screen, arrow head).

    From each front camera (:func:`front_cameras`, 0° ± 30°) the true object and its ``faceless`` variant (its back
    half mirrored onto the front: no door, no screen, a blunt end) are rendered; a view counts when, where the two
    differ, the result is closer to the truth. A result that is Janus but keeps its front scores 1 here and high in
    :func:`janus_score`; one that lost its front scores 0 here. With ``repaint_fn`` the references are the result's
    own surface in the true and the faceless paint: is the door (the screen) painted where it belongs on the shape
    the result has? A door painted right on a wrong shape may miss the true door's pixels, and score 0 without it.

    Returns {"score": fraction in [0,1], "shown": [K] bool, "soft": [K] e_faceless / (e_true + e_faceless)}.
    """
    cams = front_cameras(n_views, resolution, camera_cfg)
    shown, soft = _closer_to_true(render_fn, colour, shape, cams, alignment, "faceless", feature_threshold,
                                  repaint_fn)
    return {"score": sum(shown) / max(len(shown), 1), "shown": shown, "soft": soft}


def volumetric_iou(occ_pred: OccFn, shape: str, alignment: Alignment | None = None, resolution: int = 32,
                   bound: float = 1.0) -> float:
    """IoU of occupancy on a resolution³ grid over the GT's bounding cube [−BOUND, BOUND]³, the result being
    sampled at scale · x + offset. alignment=None aligns by occupancy moments (searching [−bound, bound]³)."""
    alignment = alignment or align_by_occupancy(occ_pred, shape, bound)
    x = _grid(BOUND, resolution)
    gt = occupancy(shape, x)
    pred = _occupied(occ_pred, alignment.scale * x + torch.tensor(alignment.offset))
    union = (gt | pred).sum()
    return float((gt & pred).sum() / union) if union > 0 else 1.0


def evaluate(render_fn: RenderFn, occ_fn: OccFn | None, prompt: str, n_views: int = 8, resolution: int = 64,
             camera_cfg: CameraConfig | None = None, occ_bound: float = 1.0,
             silhouette_fn: RenderFn | None = None, repaint_fn: RepaintFn | None = None) -> dict:
    """Every metric of a result for ``prompt`` (a world caption, e.g. "a red house"; a view suffix is ignored).

    Cameras: ``n_views`` orbit views from the front at the config's eval elevation/distance/fov. Returns
    - colour, shape: parsed from the prompt; scale, offset: the :class:`Alignment` to the true shape;
    - silhouette_iou, colour_error: over the orbit (colour_error_per_view: each orbit view's, from the front);
      volumetric_iou: None without occ_fn;
    - janus, front_feature: :func:`janus_score`'s and :func:`front_feature_score`'s scores for shapes with a front
      (:data:`FRONT_FEATURE_SHAPES`), else None; janus_soft, front_feature_soft: their per-view soft scores;
    - janus_on_shape, front_feature_on_shape (and their _soft): the same on the result's own surface repainted by
      ``repaint_fn`` (when given, for the painted fronts :data:`PAINTED_FRONT_SHAPES`), else None;
    - shape_scores: for every world shape, the result re-aligned to that shape and scored by the mean silhouette
      IoU over the orbit (averaged with the volumetric IoU when occ_fn is given); rank1: True when the true shape
      scores highest. The other shapes' silhouettes come from ``silhouette_fn`` when given (a cheaper render of
      the same opacity, e.g. without shading), else from ``render_fn``.
    """
    colour, shape, _ = parse_caption(prompt)
    cfg = camera_cfg or CameraConfig()
    cams = CameraSampler(cfg).orbit(n_views, resolution)
    render_fn = _render_once(render_fn)  # the front/Janus scores vote twice (shape-blind, on shape) on one render

    moments = occupancy_moments(occ_fn, occ_bound) if occ_fn is not None else None

    def align(candidate: str, mask_gt: Tensor) -> Alignment:
        if occ_fn is not None:
            return align_by_occupancy(occ_fn, candidate, occ_bound, moments=moments)
        return align_by_silhouette(render_fn, candidate, cams, mask_gt=mask_gt)

    scores, result = {}, {}
    for candidate in SHAPES:
        rgb_gt, mask_gt, _ = render(candidate, colour, cams)
        alignment = align(candidate, mask_gt)
        rgb, mask = _render_result(render_fn if candidate == shape else silhouette_fn or render_fn, cams, alignment)
        sil = silhouette_iou(mask, mask_gt)
        vol = volumetric_iou(occ_fn, candidate, alignment) if occ_fn is not None else None
        scores[candidate] = sil if vol is None else 0.5 * (sil + vol)
        if candidate == shape:
            result = {"scale": alignment.scale, "offset": alignment.offset, "silhouette_iou": sil,
                      "colour_error": foreground_colour_error(rgb, mask, rgb_gt, mask_gt), "volumetric_iou": vol,
                      "colour_error_per_view": colour_errors(rgb, mask, rgb_gt, mask_gt)}
            for key in ("janus", "front_feature"):
                for suffix in ("", "_on_shape"):
                    result[f"{key}{suffix}"] = result[f"{key}{suffix}_soft"] = None
            repaints = {"": None}
            if repaint_fn is not None and shape in PAINTED_FRONT_SHAPES:
                repaints["_on_shape"] = repaint_fn
            if shape in FRONT_FEATURE_SHAPES:
                for key, score in (("janus", janus_score), ("front_feature", front_feature_score)):
                    for suffix, repaint in repaints.items():
                        out = score(render_fn, colour, shape, alignment, resolution=resolution, camera_cfg=cfg,
                                    repaint_fn=repaint)
                        # the per-view soft scores show how near a run whose verdict is 0 came to drawing it
                        result[f"{key}{suffix}"], result[f"{key}{suffix}_soft"] = out["score"], out["soft"]
    best = max(scores, key=scores.get)
    return {"colour": colour, "shape": shape, **result, "shape_scores": scores, "rank1": best == shape}
