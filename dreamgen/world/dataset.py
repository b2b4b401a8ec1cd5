"""Captioned renders of the procedural world: the training set of the embedded text-to-image prior.

Cameras are drawn like :class:`dreamgen.cameras.CameraSampler` with the same :class:`CameraConfig` ranges (azimuth,
elevation, distance, fov), so objects fill the frame at the same scale as text-to-3D renders. Objects with a front
(:data:`FRONT_FEATURE_SHAPES`) get front-biased azimuths, as in web photos: that bias is what makes a 2-D prior paint
faces on the back (the Janus artefact the metrics measure). Every image keeps its camera (azimuth relative to the
object's front, elevation, distance), the camera condition of the prior v2.

Random draws are made on the CPU (so a seed gives the same data on any device); rendering runs on ``device``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS, CameraConfig, make_cameras, view_index
from dreamgen.world.captions import caption
from dreamgen.world.objects import COLOURS, FRONT_FEATURE_SHAPES, SHAPES
from dreamgen.world.render import DEFAULT_BACKGROUND, render

FRONT_HALF_WIDTH = 45.0  # degrees: "front-biased" azimuths are drawn from [−45°, 45°]


@dataclass
class WorldDataset:
    images: Tensor  # uint8 [N,H,W,3]
    captions: list[str]
    colour_idx: Tensor  # long [N] into list(COLOURS)
    shape_idx: Tensor  # long [N] into SHAPES
    view_idx: Tensor  # long [N] into VIEWS, the camera's view (whether or not the caption names it)
    has_view: Tensor  # bool [N], True where the caption carries the view suffix
    azimuth: Tensor  # float [N] degrees, 0 = the object's front
    elevation: Tensor  # float [N] degrees
    distance: Tensor  # float [N] world units

    def __len__(self) -> int:
        return self.images.shape[0]


def sample_azimuths(shape_idx: Tensor, generator: torch.Generator, cfg: CameraConfig,
                    front_bias: float = 0.7) -> Tensor:
    """[N] azimuths (deg): uniform in cfg.azimuth, except for front-feature shapes, where a fraction ``front_bias``
    is uniform in [−45°, 45°] and the rest uniform over the remaining 270°."""
    n = shape_idx.shape[0]
    lo, hi = float(cfg.azimuth[0]), float(cfg.azimuth[1])
    uniform = lo + (hi - lo) * torch.rand(n, generator=generator)
    front = FRONT_HALF_WIDTH * (2 * torch.rand(n, generator=generator) - 1)
    # Outside the front sector: [45°, 315°) wrapped to (−180°, 180°].
    rest = FRONT_HALF_WIDTH + (360.0 - 2 * FRONT_HALF_WIDTH) * torch.rand(n, generator=generator)
    rest = torch.where(rest > 180.0, rest - 360.0, rest)
    biased = torch.where(torch.rand(n, generator=generator) < front_bias, front, rest)
    has_front = torch.tensor([s in FRONT_FEATURE_SHAPES for s in SHAPES])[shape_idx]
    return torch.where(has_front, biased, uniform)


def make_dataset(n: int, resolution: int = 32, seed: int = 0, view_caption_fraction: float = 0.5,
                 camera_cfg: CameraConfig | None = None, front_bias: float = 0.7, supersample: int = 2,
                 device: str | torch.device = "cpu", chunk_rays: int | None = None) -> WorldDataset:
    """n captioned renders, reproducible for a seed, balanced over colour × shape (each of the P = colours × shapes
    pairs appears ⌊n/P⌋ or ⌈n/P⌉ times, in shuffled order). A fraction ``view_caption_fraction`` of captions end
    in ", <view> view" with the view given by :func:`dreamgen.cameras.view_index` under ``camera_cfg`` (default:
    ``CameraConfig()``). Rendering runs on ``device`` in chunks of about ``chunk_rays`` rays (default 2²⁴ on CUDA,
    2²² on the CPU); the returned tensors are on the CPU."""
    cfg = camera_cfg or CameraConfig()
    device = torch.device(device)
    if chunk_rays is None:
        chunk_rays = 1 << 24 if device.type == "cuda" else 1 << 22
    chunk = max(1, chunk_rays // (resolution * supersample) ** 2)  # images per render call
    g = torch.Generator().manual_seed(seed)
    colours = list(COLOURS)
    n_pairs = len(colours) * len(SHAPES)
    pair = (torch.arange(n) % n_pairs)[torch.randperm(n, generator=g)]
    colour_idx, shape_idx = pair // len(SHAPES), pair % len(SHAPES)

    def uniform(lo_hi: list[float]) -> Tensor:
        return float(lo_hi[0]) + (float(lo_hi[1]) - float(lo_hi[0])) * torch.rand(n, generator=g)

    azimuth = sample_azimuths(shape_idx, g, cfg, front_bias)
    elevation, distance, fov = uniform(cfg.elevation), uniform(cfg.distance), uniform(cfg.fov)
    view_idx = view_index(azimuth, elevation, cfg)
    has_view = torch.rand(n, generator=g) < view_caption_fraction

    images = torch.empty(n, resolution, resolution, 3, dtype=torch.uint8)
    palette = torch.tensor(list(COLOURS.values()))  # [colours,3]
    for s, shape in enumerate(SHAPES):
        idx = (shape_idx == s).nonzero().squeeze(1)
        for part in idx.split(chunk):
            cams = make_cameras(*(v[part].to(device) for v in (azimuth, elevation, distance, fov)), resolution, cfg)
            rgb, _, _ = render(shape, palette[colour_idx[part]].to(device), cams, background=DEFAULT_BACKGROUND,
                               supersample=supersample)
            images[part] = (rgb * 255.0).round().to(torch.uint8).cpu()
    captions = [caption(colours[c], SHAPES[s], VIEWS[v] if hv else None)
                for c, s, v, hv in zip(colour_idx.tolist(), shape_idx.tolist(), view_idx.tolist(), has_view.tolist())]
    return WorldDataset(images, captions, colour_idx, shape_idx, view_idx, has_view, azimuth, elevation, distance)
