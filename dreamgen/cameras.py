"""Camera sampling, view labels and ray generation.

Conventions (shared by the renderer, the procedural world and the prior's training data):
- World is z-up. A camera at azimuth φ, elevation θ, distance d sits at d·(cosθ·cosφ, cosθ·sinφ, sinθ) and looks at
  the origin. Azimuth 0 looks at the object's front, which faces +x.
- Camera-to-world matrices are OpenGL-style: columns (right, up, back, position); the camera looks along −z_cam.
- ``fov`` is the vertical field of view in degrees.
- View labels: ``overhead`` if θ > overhead_elevation, else ``front`` if |φ| ≤ front_range/2, ``back`` if
  |φ − 180°| ≤ back_range/2, else ``side`` (angles wrapped to (−180°, 180°]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.schema import bounded

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class CameraConfig:
    batch_size: int = bounded(1, ge=1)
    elevation: list[float] = bounded(factory=lambda: [-10.0, 45.0], ge=-90.0, le=90.0)  # degrees, uniform
    azimuth: list[float] = bounded(factory=lambda: [-180.0, 180.0], ge=-360.0, le=360.0)
    distance: list[float] = bounded(factory=lambda: [1.5, 2.0], gt=0.0)
    fov: list[float] = bounded(factory=lambda: [40.0, 70.0], gt=0.0, lt=180.0)
    # Progressive resolution: resolution[i] is used from step resolution_milestones[i-1] on.
    resolution: list[int] = bounded(factory=lambda: [64], gt=0)
    resolution_milestones: list[int] = bounded(factory=list, ge=0)
    front_range: float = bounded(90.0, gt=0.0, le=360.0)
    back_range: float = bounded(90.0, gt=0.0, le=360.0)
    overhead_elevation: float = bounded(60.0, ge=-90.0, le=90.0)
    # Fixed orbit used for previews, the final strip and evaluation.
    eval_elevation: float = bounded(15.0, ge=-90.0, le=90.0)
    eval_distance: float = bounded(1.75, gt=0.0)
    eval_fov: float = bounded(55.0, gt=0.0, lt=180.0)

    def check(self, key: str) -> None:
        for name in ("elevation", "azimuth", "distance", "fov"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"{key}.{name}={list(lo_hi)}: must be a range [low, high] with low ≤ high")
        if not self.resolution:
            raise ConfigError(f"{key}.resolution=[]: needs at least one resolution, e.g. [64]")
        if len(self.resolution) != len(self.resolution_milestones) + 1:
            raise ConfigError(f"{key}.resolution has {len(self.resolution)} entries and {key}.resolution_milestones "
                              f"{len(self.resolution_milestones)}: it needs exactly one more (resolution[i] is used "
                              "from milestone i-1 on)")
        if list(self.resolution_milestones) != sorted(set(self.resolution_milestones)):
            raise ConfigError(f"{key}.resolution_milestones={list(self.resolution_milestones)}: must be increasing")


@dataclass
class Cameras:
    c2w: Tensor  # [B,4,4]
    fov_y: Tensor  # [B] radians
    azimuth: Tensor  # [B] degrees
    elevation: Tensor  # [B] degrees
    distance: Tensor  # [B]
    view_idx: Tensor  # [B] long index into VIEWS
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def flat(self) -> Tensor:
        """[B,16] flattened c2w, the camera condition of VSD-style LoRA scores."""
        return self.c2w.reshape(len(self), 16)

    def to(self, device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.fov_y.to(device), self.azimuth.to(device),
                       self.elevation.to(device), self.distance.to(device), self.view_idx.to(device),
                       self.height, self.width)


def wrap_degrees(a: Tensor) -> Tensor:
    """Wrap to (−180, 180]."""
    return 180.0 - torch.remainder(180.0 - a, 360.0)


def view_index(azimuth: Tensor, elevation: Tensor, cfg: CameraConfig) -> Tensor:
    """[B] long index into VIEWS by the rules in the module docstring."""
    az = wrap_degrees(azimuth)
    idx = torch.full(az.shape, VIEWS.index("side"), dtype=torch.long, device=az.device)
    idx[az.abs() <= cfg.front_range / 2] = VIEWS.index("front")
    idx[(180.0 - az.abs()) <= cfg.back_range / 2] = VIEWS.index("back")
    idx[elevation > cfg.overhead_elevation] = VIEWS.index("overhead")
    return idx


def look_at(position: Tensor) -> Tensor:
    """position: [B,3] -> c2w [B,4,4] looking at the origin with world +z up."""
    back = torch.nn.functional.normalize(position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device).expand_as(back)
    right = torch.linalg.cross(up_world, back, dim=-1)
    # Straight overhead the world up is parallel to the view: fall back to +y as "up" for the right vector.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([0.0, 1.0, 0.0], dtype=position.dtype,
                                                 device=position.device).expand_as(right), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype, device=position.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, position
    c2w[:, 3, 3] = 1.0
    return c2w


def make_cameras(azimuth: Tensor, elevation: Tensor, distance: Tensor, fov: Tensor, resolution: int,
                 cfg: CameraConfig) -> Cameras:
    """Cameras from per-camera azimuth/elevation (deg), distance and vertical fov (deg)."""
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    pos = distance[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    return Cameras(look_at(pos), torch.deg2rad(fov), azimuth, elevation, distance,
                   view_index(azimuth, elevation, cfg), resolution, resolution)


class CameraSampler:
    """Random training cameras from the config's ranges; before step ``front_until`` the azimuth is drawn within
    ``front_azimuth`` degrees of the front instead (a stage that paints the front first)."""

    def __init__(self, cfg: CameraConfig, front_until: int = 0, front_azimuth: float = 0.0):
        self.cfg = cfg
        self.front_until = front_until
        self.front_azimuth = front_azimuth

    def resolution(self, step: int) -> int:
        res = self.cfg.resolution[0]
        for milestone, r in zip(self.cfg.resolution_milestones, self.cfg.resolution[1:]):
            if step >= milestone:
                res = r
        return int(res)

    def sample(self, step: int, generator: torch.Generator | None = None) -> Cameras:
        c, b = self.cfg, self.cfg.batch_size

        def uniform(lo_hi: list[float]) -> Tensor:
            lo, hi = float(lo_hi[0]), float(lo_hi[1])
            return lo + (hi - lo) * torch.rand(b, generator=generator)

        azimuth = [-self.front_azimuth, self.front_azimuth] if step < self.front_until else c.azimuth
        return make_cameras(uniform(azimuth), uniform(c.elevation), uniform(c.distance), uniform(c.fov),
                            self.resolution(step), c)

    def orbit(self, n_views: int, resolution: int, elevation: float | None = None) -> Cameras:
        """n_views cameras evenly spaced in azimuth starting at the front (previews, eval)."""
        c = self.cfg
        az = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
        full = lambda v: torch.full((n_views,), float(v))  # noqa: E731
        return make_cameras(wrap_degrees(az), full(c.eval_elevation if elevation is None else elevation),
                            full(c.eval_distance), full(c.eval_fov), resolution, c)


def rays(cams: Cameras) -> tuple[Tensor, Tensor]:
    """Pixel-centre rays. Returns origins [B,H,W,3] and unit directions [B,H,W,3] in world space."""
    B, H, W = len(cams), cams.height, cams.width
    dev, dt = cams.c2w.device, cams.c2w.dtype
    focal = 0.5 * H / torch.tan(0.5 * cams.fov_y)  # [B] pixels
    j = torch.arange(W, device=dev, dtype=dt) + 0.5
    i = torch.arange(H, device=dev, dtype=dt) + 0.5
    ii, jj = torch.meshgrid(i, j, indexing="ij")
    d_cam = torch.stack([
        (jj[None] - W / 2) / focal[:, None, None],
        -(ii[None] - H / 2) / focal[:, None, None],
        -torch.ones(B, H, W, device=dev, dtype=dt),
    ], dim=-1)  # [B,H,W,3]
    d_world = torch.einsum("bij,bhwj->bhwi", cams.c2w[:, :3, :3], d_cam)
    d_world = torch.nn.functional.normalize(d_world, dim=-1)
    origins = cams.c2w[:, None, None, :3, 3].expand_as(d_world)
    return origins, d_world


def fov_to_focal(fov_deg: float, size: int) -> float:
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)
