"""Does the embedded prior draw what its captions (and cameras) say? (``scripts/eval_prior.py``)

Classifier: a small CNN trained here, in seconds on a GPU, on ground-truth renders at the prior's resolution
(:func:`make_dataset` with seeds far from the training seed, so cameras are drawn as in training), with three heads:
colour, object, and for each front-feature shape (house, tv, arrow) "front feature facing the camera" (the camera's
azimuth is within 90° of the front's normal, +x). A 1-nearest-neighbour classifier in pixel space was tried first
and rejected: on held-out GT renders it got colours right 96% of the time and the house's facing 81% (the door is a
few pixels; pose dominates L2). The CNN's own accuracy on held-out GT renders is reported beside the prior's
(``classifier_gt``): trust the prior's numbers only as far as those are ≈ 1.

Checks, per colour: every "a {colour} {object}" (colour and object accuracy); for each front-feature shape, the
"..., front view" samples must be classified facing and the "..., back view" ones not; with a camera input (v2),
the plain caption sampled with the camera at azimuth 0 must face and at 180° must not (at the eval orbit's
elevation and distance).

Pose (:func:`pose_errors`, v2): facing is paint; whether the camera also sets the *view* is a separate question,
which decides whether camera-aware guidance can ask a side view for a side's outline. For each front-feature object
and azimuth 0°, 45°, …, 180°, the samples' outline (the bounding box of the pixels off the white background) is
compared with the true object's at the same camera: |log(width/height ratio of the sample / of the truth)|,
median over samples. The text-only samples (same noise, null camera) are the baseline: a camera that sets the
view lowers the error below theirs; a thin tv seen side-on has ratio 0.39, face-on 1.07.

Layout (:func:`layout_errors`, v2): the same comparison one step earlier, where the pose is decided. At t = T the
noisy image holds no signal, so the best x0 estimate is the mean image of the condition: with a camera, the mean of
the object's views from there (a thin slab for a tv side-on). The outline of the mean first-step estimate is
compared with the outline of the mean true view, both at half their largest departure from the background.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.cameras import CameraConfig, make_cameras, wrap_degrees
from dreamgen.prior.model import ShapesPrior
from dreamgen.prior.sample import grid, sample, to_uint8
from dreamgen.world.captions import caption
from dreamgen.world.dataset import WorldDataset, make_dataset
from dreamgen.world.objects import COLOURS, FRONT_FEATURE_SHAPES, SHAPES
from dreamgen.world.render import DEFAULT_BACKGROUND, render

COLOUR_NAMES = list(COLOURS)
# Facing head of each shape (−1: no front).
FRONT_INDEX = torch.tensor([FRONT_FEATURE_SHAPES.index(s) if s in FRONT_FEATURE_SHAPES else -1 for s in SHAPES])
CLASSIFIER_SEED = 1_000_003  # far from training seeds, so the classifier's data is not the prior's training set
POSE_AZIMUTHS = (0.0, 45.0, 90.0, 135.0, 180.0)


def front_facing(azimuth: Tensor) -> Tensor:
    """bool [N]: a camera at this azimuth (deg) is on the front's side of the object (front normal = +x)."""
    return wrap_degrees(azimuth).abs() < 90.0


class WorldClassifier(nn.Module):
    """uint8 [B,S,S,3] -> logits (colour [B,8], object [B,len(SHAPES)], facing [B,len(FRONT_FEATURE_SHAPES)]);
    facing[:, i] is read only for images of the i-th front-feature shape. Convs halve S down to 8×8, then an MLP
    (at S = 32: 32 → 16 → 8, the v1 classifier)."""

    def __init__(self, resolution: int = 32, width: int = 48):
        super().__init__()
        halvings = int(math.log2(resolution // 8))
        if resolution != 8 * 2**halvings:
            raise ValueError(f"the classifier needs a resolution of 8·2^k, got {resolution}")
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        layers, c = [block(3, w, 1), block(w, w, 1)], w
        for i in range(halvings):
            layers.append(block(c, 2 * w, 2))
            c = 2 * w
            if i < halvings - 1:
                layers.append(block(c, c, 1))
        self.resolution = resolution
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 64, 256), nn.SiLU())
        self.heads = nn.Linear(256, len(COLOURS) + len(SHAPES) + len(FRONT_FEATURE_SHAPES))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        out = self.heads(self.features(x))
        nc, ns = len(COLOURS), len(SHAPES)
        return out[:, :nc], out[:, nc:nc + ns], out[:, nc + ns:]

    @torch.no_grad()
    def predict(self, images: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
        """-> colour_idx [B], shape_idx [B], facing bool [B, len(FRONT_FEATURE_SHAPES)] (on the CPU)."""
        self.eval()
        dev = self.heads.weight.device
        outs = [self(images[i:i + batch].to(dev)) for i in range(0, len(images), batch)]
        c, s, f = (torch.cat(o).cpu() for o in zip(*outs))
        return c.argmax(1), s.argmax(1), f > 0


def facing_of(facing: Tensor, shape_idx: Tensor) -> Tensor:
    """facing bool [B, len(FRONT_FEATURE_SHAPES)] read at each row's front-feature shape [B] -> bool [B]."""
    return facing.gather(1, FRONT_INDEX[shape_idx].clamp(min=0)[:, None])[:, 0]


def train_classifier(data: WorldDataset, device: torch.device | str, steps: int = 400, batch: int = 256,
                     seed: int = 0) -> WorldClassifier:
    """Fit the three heads on GT renders; light pixel noise so slightly imperfect samples stay in distribution."""
    torch.manual_seed(seed)
    res = data.images.shape[1]
    net = WorldClassifier(res).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    images = data.images.to(device)
    colour, shape = data.colour_idx.to(device), data.shape_idx.to(device)
    facing = front_facing(data.azimuth).float().to(device)
    head = FRONT_INDEX.to(device)[shape]  # [N], −1 for shapes without a front
    g = torch.Generator(device).manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), device=device, generator=g)
        noise = torch.randn(batch, res, res, 3, device=device, generator=g) * 8.0  # ≈ 3% of the range
        x = (images[idx].float() + noise).clamp(0, 255)
        lc, ls, lf = net(x)
        has_front = (head[idx] >= 0).float()
        lf = lf.gather(1, head[idx].clamp(min=0)[:, None])[:, 0]
        loss = (F.cross_entropy(lc, colour[idx]) + F.cross_entropy(ls, shape[idx])
                + (F.binary_cross_entropy_with_logits(lf, facing[idx], reduction="none") * has_front).sum()
                / has_front.sum().clamp(min=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def gt_set(per_pair: int, seed: int, resolution: int = 32, device: torch.device | str = "cpu") -> WorldDataset:
    """``per_pair`` GT renders of every colour × shape, cameras drawn as in the prior's training set."""
    return make_dataset(per_pair * len(COLOURS) * len(SHAPES), resolution=resolution, seed=seed, device=device)


def classifier_accuracy(net: WorldClassifier, data: WorldDataset) -> dict[str, Any]:
    """The classifier on held-out GT renders; facing on the front/back views of the front-feature shapes."""
    c, s, f = net.predict(data.images)
    fb = (FRONT_INDEX[data.shape_idx] >= 0) & ((data.view_idx == 0) | (data.view_idx == 2))  # front/back views
    facing_ok = facing_of(f[fb], data.shape_idx[fb]) == front_facing(data.azimuth[fb])
    return {"colour_accuracy": _mean(c == data.colour_idx), "object_accuracy": _mean(s == data.shape_idx),
            "facing_accuracy_front_back_views": _mean(facing_ok), "n": len(data)}


def _mean(x: Tensor) -> float | None:
    return x.float().mean().item() if x.numel() else None


def eval_rows(model: ShapesPrior) -> list[tuple[str, str, str, str | None, float | None]]:
    """The evaluated conditions, colour-major (so a grid of them has one row per colour):
    (prompt, colour, shape, view or None, camera azimuth or None)."""
    spec = model.spec
    fronts = [s for s in FRONT_FEATURE_SHAPES if s in spec.shapes]
    rows = []
    for c in spec.colours:
        rows += [(caption(c, s), c, s, None, None) for s in spec.shapes]
        rows += [(caption(c, s, v), c, s, v, None) for s in fronts for v in ("front", "back")]
        if spec.camera_dim:
            rows += [(caption(c, s), c, s, None, az) for s in fronts for az in (0.0, 180.0)]
    return rows


@torch.no_grad()
def sample_rows(model: ShapesPrior, rows: list[tuple[str, str, str, str | None, float | None]], n: int, steps: int,
                guidance_scale: float, generator: torch.Generator, batch: int) -> Tensor:
    """n samples of each row of :func:`eval_rows` -> uint8 [len(rows), n, S, S, 3]; camera rows are sampled at the
    eval orbit's elevation and distance."""
    s, view = model.spec.image_size, CameraConfig()
    prompts = [r[0] for r in rows for _ in range(n)]
    azimuth = [r[4] for r in rows for _ in range(n)]
    out = torch.empty(len(prompts), s, s, 3, dtype=torch.uint8)
    for with_camera in (False, True):
        idx = [i for i, az in enumerate(azimuth) if (az is not None) == with_camera]
        for part in (idx[i:i + batch] for i in range(0, len(idx), batch)):
            camera = None
            if with_camera:
                az = torch.tensor([azimuth[i] for i in part])
                camera = model.camera_features(az, torch.full_like(az, view.eval_elevation),
                                               torch.full_like(az, view.eval_distance))
            x = sample(model, [prompts[i] for i in part], steps, guidance_scale, generator, camera)
            out[torch.tensor(part)] = to_uint8(x)
    return out.reshape(len(rows), n, s, s, 3)


def outline_aspect(images: Tensor, tol: float = 0.15) -> Tensor:
    """uint8 [N,S,S,3] over the white background -> [N] width / height of the bounding box of the pixels that differ
    from it by more than ``tol`` in some channel (NaN for an empty image)."""
    return bbox_aspect(background_departure(images) > tol)


def mean_outline_aspect(images: Tensor) -> Tensor:
    """uint8 [N,S,S,3] -> [1] width / height of their mean image's outline: the pixels departing from the background
    by more than half the most any pixel does (a mean image's edges are soft, so no fixed tolerance fits)."""
    departure = background_departure(images).mean(0, keepdim=True)  # [1,S,S]
    return bbox_aspect(departure > 0.5 * departure.amax())


def background_departure(images: Tensor) -> Tensor:
    """uint8 [N,S,S,3] -> [N,S,S]: each pixel's largest per-channel distance from the white background."""
    bg = torch.tensor(DEFAULT_BACKGROUND, device=images.device)
    return (images.float() / 255.0 - bg).abs().amax(-1)


def bbox_aspect(fg: Tensor) -> Tensor:
    """bool [N,S,S] -> [N] width / height of each mask's bounding box (NaN for an empty mask)."""
    cols, rows = fg.any(1), fg.any(2)  # [N,S] each

    def extent(m: Tensor) -> Tensor:
        idx = torch.arange(m.shape[1], device=m.device).expand_as(m)
        hi = torch.where(m, idx, -1).amax(1)
        lo = torch.where(m, idx, m.shape[1]).amin(1)
        return (hi - lo + 1).float()

    aspect = extent(cols) / extent(rows)
    return torch.where(fg.flatten(1).any(1), aspect, torch.full_like(aspect, math.nan))


OutlineOf = Callable[[list[str], "Tensor | None", int], Tensor]  # (prompts, camera features or None, noise seed)


def outline_study(model: ShapesPrior, n: int, generator: torch.Generator, colour: str, outline_of: OutlineOf,
                  true_outline: Callable[[str, float], Tensor]) -> dict[str, Any]:
    """For each front-feature shape and azimuth of :data:`POSE_AZIMUTHS`: the outline the model draws with the camera
    and from the same noises without it, against the truth's -> {"camera", "text_only": median |log ratio|,
    "per_shape": {shape: {azimuth: {"true", "camera", "text_only"}}}} (median width/height ratios)."""
    dev = next(model.parameters()).device
    view = CameraConfig()
    fronts = [sh for sh in FRONT_FEATURE_SHAPES if sh in model.spec.shapes]
    full = lambda v: torch.full((n,), float(v), device=dev)  # noqa: E731
    noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    errs: dict[str, list[Tensor]] = {"camera": [], "text_only": []}
    per_shape: dict[str, dict[float, dict[str, float]]] = {}
    for shape in fronts:
        prompts = [caption(colour, shape)] * n
        text_only = outline_of(prompts, None, noise_seed)  # the same noises for every condition
        per_shape[shape] = {}
        for az in POSE_AZIMUTHS:
            true = true_outline(shape, az)
            camera = model.camera_features(full(az), full(view.eval_elevation), full(view.eval_distance))
            with_camera = outline_of(prompts, camera, noise_seed)
            errs["camera"].append((with_camera / true).log().abs())
            errs["text_only"].append((text_only / true).log().abs())
            per_shape[shape][az] = {"true": true.item(), "camera": with_camera.nanmedian().item(),
                                    "text_only": text_only.nanmedian().item()}
    return {"camera": torch.cat(errs["camera"]).nanmedian().item(),
            "text_only": torch.cat(errs["text_only"]).nanmedian().item(), "per_shape": per_shape}


def true_views(shape: str, colour: str, azimuth: float, fov: Tensor, resolution: int) -> Tensor:
    """uint8 [len(fov),S,S,3]: the true object at ``azimuth`` from the eval orbit's elevation and distance."""
    view, k = CameraConfig(), len(fov)
    at = lambda v: torch.full((k,), float(v), device=fov.device)  # noqa: E731
    cams = make_cameras(at(azimuth), at(view.eval_elevation), at(view.eval_distance), fov, resolution, view)
    rgb, _, _ = render(shape, colour, cams, supersample=2)
    return (rgb * 255).round().to(torch.uint8)


@torch.no_grad()
def pose_errors(model: ShapesPrior, n: int, steps: int, guidance_scale: float, generator: torch.Generator,
                colour: str = "red") -> dict[str, Any]:
    """Does the camera set the view? (module docstring): :func:`outline_study` of ``n`` DDIM samples' outlines
    against the true object's at the eval camera."""
    dev = next(model.parameters()).device
    s, fov = model.spec.image_size, torch.tensor([CameraConfig().eval_fov], device=dev)

    def samples(prompts: list[str], camera: Tensor | None, seed: int) -> Tensor:
        return outline_aspect(to_uint8(sample(model, prompts, steps, guidance_scale,
                                              torch.Generator(dev).manual_seed(seed), camera)))

    return outline_study(model, n, generator, colour, samples,
                         lambda shape, az: outline_aspect(true_views(shape, colour, az, fov, s))[0])


@torch.no_grad()
def layout_errors(model: ShapesPrior, n: int, guidance_scale: float, generator: torch.Generator,
                  colour: str = "red") -> dict[str, Any]:
    """Does the camera set the layout where only the condition can? (module docstring): :func:`outline_study` of the
    mean of ``n`` first-step x0 estimates at t = T (from pure noise, CFG as in sampling; the best such estimate is
    the mean image of the condition) against the mean of ``n`` true views at the eval orbit, the field of view spread
    over the training range (the camera condition does not include it)."""
    dev = next(model.parameters()).device
    s, lo_hi = model.spec.image_size, CameraConfig().fov
    fov = torch.linspace(float(lo_hi[0]), float(lo_hi[1]), n, device=dev)

    def first_estimates(prompts: list[str], camera: Tensor | None, seed: int) -> Tensor:
        x0 = sample(model, prompts, 1, guidance_scale, torch.Generator(dev).manual_seed(seed), camera)
        return mean_outline_aspect(to_uint8(x0))

    return outline_study(model, n, generator, colour, first_estimates,
                         lambda shape, az: mean_outline_aspect(true_views(shape, colour, az, fov, s))[0])


def camera_checks(model: ShapesPrior, n: int, steps: int, guidance_scale: float, seed: int) -> dict[str, Any]:
    """-> {"pose_error": :func:`pose_errors`, "layout_error": :func:`layout_errors`}, each seeded by ``seed``."""
    dev = next(model.parameters()).device
    return {"pose_error": pose_errors(model, n, steps, guidance_scale, torch.Generator(dev).manual_seed(seed)),
            "layout_error": layout_errors(model, n, guidance_scale, torch.Generator(dev).manual_seed(seed))}


def evaluate_prior(model: ShapesPrior, n_per_caption: int = 16, steps: int = 50, guidance_scale: float = 3.0,
                   seed: int = 0, classifier_per_pair: int = 200, classifier_steps: int = 400,
                   batch: int | None = None) -> tuple[dict[str, Any], Tensor]:
    """Sample every row of :func:`eval_rows` and score the samples with a classifier trained on GT renders.

    Returns (report, images uint8 [rows, n_per_caption, S, S, 3] in :func:`eval_rows` order). Camera checks are None
    for a prior without a camera input.
    """
    dev = next(model.parameters()).device
    batch = batch or (512 if dev.type == "cuda" else 64)
    res = model.spec.image_size
    net = train_classifier(gt_set(classifier_per_pair, CLASSIFIER_SEED, res, dev), dev, classifier_steps, seed=seed)
    held_out = gt_set(max(classifier_per_pair // 10, 2), CLASSIFIER_SEED + 1, res, dev)

    rows = eval_rows(model)
    g = torch.Generator(dev).manual_seed(seed)
    images = sample_rows(model, rows, n_per_caption, steps, guidance_scale, g, batch)
    colour_pred, shape_pred, facing_pred = net.predict(images.flatten(0, 1))

    def per_sample(values: list) -> Tensor:
        return torch.tensor(values).repeat_interleave(n_per_caption)

    colour_true = per_sample([COLOUR_NAMES.index(r[1]) for r in rows])
    shape_true = per_sample([SHAPES.index(r[2]) for r in rows])
    view, azimuth = [r[3] for r in rows], [r[4] for r in rows]
    plain = per_sample([v is None and a is None for v, a in zip(view, azimuth)])
    facing = facing_of(facing_pred, shape_true)
    colour_ok, shape_ok = colour_pred == colour_true, shape_pred == shape_true
    # (view, azimuth) of each front/back condition and whether its samples must face the camera.
    checks = {"front_view_shown": (("front", None), True), "back_view_hidden": (("back", None), False),
              "camera_front_shown": ((None, 0.0), True), "camera_back_hidden": ((None, 180.0), False)}

    def facing_ok(key: str, shape: str | None = None) -> Tensor:
        (v, a), want = checks[key]
        rows_mask = per_sample([(r[3], r[4]) == (v, a) and r[2] == (shape or r[2]) for r in rows])
        return facing[rows_mask] == want

    fronts = [s for s in FRONT_FEATURE_SHAPES if s in model.spec.shapes]
    conditioned = ~plain
    per = n_per_caption
    report = {
        "colour_accuracy": _mean(colour_ok[plain]),
        "object_accuracy": _mean(shape_ok[plain]),
        "front_feature_front_views": _mean(facing_ok("front_view_shown")),
        "front_feature_back_views_hidden": _mean(facing_ok("back_view_hidden")),
        "camera_front_visible": _mean(facing_ok("camera_front_shown")),
        "camera_back_hidden": _mean(facing_ok("camera_back_hidden")),
        "front_prompts_right_colour_and_object": _mean((colour_ok & shape_ok)[conditioned]),
        "per_front_shape": {s: {k: _mean(facing_ok(k, s)) for k in checks} for s in fronts},
        "per_caption": {r[0]: {"colour": _mean(colour_ok[i * per:(i + 1) * per]),
                               "object": _mean(shape_ok[i * per:(i + 1) * per])}
                        for i, r in enumerate(rows) if r[3] is None and r[4] is None},
        **(camera_checks(model, per, steps, guidance_scale, seed) if model.spec.camera_dim
           else {"pose_error": None, "layout_error": None}),
        "classifier_gt": classifier_accuracy(net, held_out),
        "settings": {"n_per_caption": n_per_caption, "ddim_steps": steps, "guidance_scale": guidance_scale,
                     "seed": seed, "classifier_per_pair": classifier_per_pair, "classifier_steps": classifier_steps,
                     "image_size": res, "camera_dim": model.spec.camera_dim},
    }
    return report, images


def sample_grid(images: Tensor, n_colours: int, per_row: int = 2) -> Tensor:
    """images uint8 [rows, n, S, S, 3] in :func:`eval_rows` order -> one grid image with one line per colour and the
    first ``per_row`` samples of each of its conditions side by side."""
    shown = images[:, :per_row]
    return grid(shown.flatten(0, 1), ncol=shown.shape[0] // n_colours * shown.shape[1])


def loss_curve(metrics_path: str | Path, width: int = 640, height: int = 360):
    """metrics.jsonl -> PIL image of loss vs step (log-scaled loss axis), drawn with PIL alone."""
    from PIL import Image, ImageDraw

    recs = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in recs]
    logl = [math.log10(max(r["loss"], 1e-12)) for r in recs]
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 15, 15, height - 35
    d.rectangle([left, top, right, bottom], outline="black")
    if not recs:
        d.text((left + 10, top + 10), "no metrics yet", fill="black")
        return img
    s0, s1 = min(steps), max(steps)
    lo, hi = min(logl), max(logl)
    span_s, span_l = max(s1 - s0, 1), max(hi - lo, 1e-6)
    pts = [(left + (s - s0) / span_s * (right - left), bottom - (v - lo) / span_l * (bottom - top))
           for s, v in zip(steps, logl)]
    if len(pts) > 1:
        d.line(pts, fill=(200, 30, 30), width=2)
    else:
        d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=(200, 30, 30))
    d.text((5, top), f"{10 ** hi:.3g}", fill="black")
    d.text((5, bottom - 10), f"{10 ** lo:.3g}", fill="black")
    d.text((left, bottom + 8), f"step {s0}", fill="black")
    d.text((right - 80, bottom + 8), f"step {s1}", fill="black")
    d.text((left + (right - left) // 2 - 60, bottom + 8), "training loss (log)", fill="black")
    return img
