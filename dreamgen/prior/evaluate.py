"""Does the embedded prior draw what its captions say? (``scripts/eval_prior.py``)

Classifier: a small CNN trained here, in seconds on a GPU, on ground-truth renders (:func:`make_dataset` with seeds
far from the training seed, so cameras are drawn as in training), with three heads: colour, object, and "door
facing the camera" (houses only; the camera's azimuth is within 90° of the door wall's normal). A 1-nearest-neighbour
classifier in pixel space was tried first and rejected: on held-out GT renders it got colours right 96% of the time
and the house's facing 81% (the door is a few pixels; pose dominates L2). The CNN's own accuracy on held-out GT
renders is reported beside the prior's (``classifier_gt``): trust the prior's numbers only as far as those are ≈ 1.

Door check: "a {colour} house, front view" samples must be classified door-facing, "..., back view" ones not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.cameras import wrap_degrees
from dreamgen.prior.model import ShapesPrior
from dreamgen.prior.sample import grid, sample, to_uint8
from dreamgen.world.captions import caption
from dreamgen.world.dataset import WorldDataset, make_dataset
from dreamgen.world.objects import COLOURS, SHAPES

COLOUR_NAMES = list(COLOURS)
HOUSE = SHAPES.index("house")
CLASSIFIER_SEED = 1_000_003  # far from training seeds, so the classifier's data is not the prior's training set


def door_facing(azimuth: Tensor) -> Tensor:
    """bool [N]: a camera at this azimuth (deg) is on the door's side of the house (door wall normal = +x)."""
    return wrap_degrees(azimuth).abs() < 90.0


class WorldClassifier(nn.Module):
    """uint8 [B,32,32,3] -> logits (colour [B,8], object [B,6], door [B]); conv net 32 → 16 → 8, then an MLP."""

    def __init__(self, width: int = 48):
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(3, w, 1), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                      block(2 * w, 2 * w, 2), nn.Flatten(), nn.Linear(2 * w * 64, 256), nn.SiLU())
        self.heads = nn.Linear(256, len(COLOURS) + len(SHAPES) + 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        out = self.heads(self.features(x))
        nc, ns = len(COLOURS), len(SHAPES)
        return out[:, :nc], out[:, nc:nc + ns], out[:, -1]

    @torch.no_grad()
    def predict(self, images: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
        """-> colour_idx [B], shape_idx [B], door-facing bool [B] (on the classifier's device)."""
        self.eval()
        dev = self.heads.weight.device
        outs = [self(images[i:i + batch].to(dev)) for i in range(0, len(images), batch)]
        c, s, d = (torch.cat(o) for o in zip(*outs))
        return c.argmax(1), s.argmax(1), d > 0


def train_classifier(data: WorldDataset, device: torch.device | str, steps: int = 400, batch: int = 256,
                     seed: int = 0) -> WorldClassifier:
    """Fit the three heads on GT renders; light pixel noise so slightly imperfect samples stay in distribution."""
    torch.manual_seed(seed)
    net = WorldClassifier().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    images = data.images.to(device)
    colour, shape = data.colour_idx.to(device), data.shape_idx.to(device)
    door = door_facing(data.azimuth).float().to(device)
    g = torch.Generator(device).manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), device=device, generator=g)
        noise = torch.randn(batch, 32, 32, 3, device=device, generator=g) * 8.0  # ≈ 3% of the range
        x = (images[idx].float() + noise).clamp(0, 255)
        lc, ls, ld = net(x)
        house = (shape[idx] == HOUSE).float()
        loss = (F.cross_entropy(lc, colour[idx]) + F.cross_entropy(ls, shape[idx])
                + (F.binary_cross_entropy_with_logits(ld, door[idx], reduction="none") * house).sum()
                / house.sum().clamp(min=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def gt_set(per_pair: int, seed: int, resolution: int = 32) -> WorldDataset:
    """``per_pair`` GT renders of every colour × shape, cameras drawn as in the prior's training set."""
    return make_dataset(per_pair * len(COLOURS) * len(SHAPES), resolution=resolution, seed=seed)


def classifier_accuracy(net: WorldClassifier, data: WorldDataset) -> dict[str, float]:
    c, s, d = (v.cpu() for v in net.predict(data.images))
    fb = (data.shape_idx == HOUSE) & ((data.view_idx == 0) | (data.view_idx == 2))  # front/back house views
    return {"colour_accuracy": (c == data.colour_idx).float().mean().item(),
            "object_accuracy": (s == data.shape_idx).float().mean().item(),
            "door_accuracy_front_back_views": (d[fb] == door_facing(data.azimuth[fb])).float().mean().item(),
            "n": len(data)}


def evaluate_prior(model: ShapesPrior, n_per_caption: int = 16, steps: int = 50, guidance_scale: float = 3.0,
                   seed: int = 0, classifier_per_pair: int = 200, classifier_steps: int = 400,
                   batch: int = 256) -> tuple[dict[str, Any], Tensor]:
    """Sample every "a {colour} {shape}" plus the house's front/back views and score them.

    Returns (report, images uint8 [C·n, 32, 32, 3] in caption order: plain captions first, then house views).
    """
    dev = next(model.parameters()).device
    res = model.spec.image_size
    net = train_classifier(gt_set(classifier_per_pair, CLASSIFIER_SEED, res), dev, classifier_steps, seed=seed)
    held_out = gt_set(max(classifier_per_pair // 10, 2), CLASSIFIER_SEED + 1, res)

    plain = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    house = [(c, v) for c in COLOUR_NAMES for v in ("front", "back")]
    prompts = [caption(c, s) for c, s in plain] + [caption(c, "house", v) for c, v in house]
    rows = [p for p in prompts for _ in range(n_per_caption)]
    g = torch.Generator(dev).manual_seed(seed)
    images = torch.cat([to_uint8(sample(model, rows[i:i + batch], steps, guidance_scale, g))
                        for i in range(0, len(rows), batch)])
    col_pred, shape_pred, door_pred = (v.cpu() for v in net.predict(images))

    n_plain = len(plain) * n_per_caption
    col_true = torch.tensor([COLOUR_NAMES.index(c) for c, _ in plain]).repeat_interleave(n_per_caption)
    shape_true = torch.tensor([SHAPES.index(s) for _, s in plain]).repeat_interleave(n_per_caption)
    col_ok, shape_ok = col_pred[:n_plain] == col_true, shape_pred[:n_plain] == shape_true
    want_door = torch.tensor([v == "front" for _, v in house]).repeat_interleave(n_per_caption)
    door_ok = door_pred[n_plain:] == want_door
    house_ok = (shape_pred[n_plain:] == HOUSE) & (col_pred[n_plain:] == torch.tensor(
        [COLOUR_NAMES.index(c) for c, _ in house]).repeat_interleave(n_per_caption))

    def mean(x: Tensor) -> float:
        return x.float().mean().item()

    per = n_per_caption
    report = {
        "colour_accuracy": mean(col_ok),
        "object_accuracy": mean(shape_ok),
        "door_front_visible": mean(door_ok[want_door]),
        "door_back_hidden": mean(door_ok[~want_door]),
        "house_view_prompts_right_colour_and_object": mean(house_ok),
        "per_caption": {caption(c, s): {"colour": mean(col_ok[i * per:(i + 1) * per]),
                                        "object": mean(shape_ok[i * per:(i + 1) * per])}
                        for i, (c, s) in enumerate(plain)},
        "classifier_gt": classifier_accuracy(net, held_out),
        "settings": {"n_per_caption": n_per_caption, "ddim_steps": steps, "guidance_scale": guidance_scale,
                     "seed": seed, "classifier_per_pair": classifier_per_pair, "classifier_steps": classifier_steps},
    }
    return report, images


def sample_grid(images: Tensor, n_per_caption: int) -> Tensor:
    """One row per caption, its samples side by side."""
    return grid(images, ncol=n_per_caption)


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
