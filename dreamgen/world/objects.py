"""Procedural objects with exact geometry: signed distance functions and albedo.

Every object is centred near the origin in the z-up world of :mod:`dreamgen.cameras` and fits inside the ball of
radius :data:`BOUND` (< 0.7), so a camera at the default distances (1.5–2.0) always sees all of it. The ``house`` is
the one asymmetric object: its front (+x, azimuth 0) has a door and two windows painted in its albedo; its back (−x)
is a plain wall. Its geometry is mirror-symmetric under x → −x, so only the albedo tells front from back, which is
what makes it a Janus probe.

SDFs are exact (Euclidean distance) except the house roof, a prism built as an intersection of half-spaces, whose
value outside is a lower bound of the distance — still safe for sphere tracing and exact in sign.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SHAPES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder", "torus", "house")
# Shapes whose albedo differs between front and back (the Janus probes).
FRONT_FEATURE_SHAPES: tuple[str, ...] = ("house",)

# Saturated, well-separated hues that stay distinguishable after Lambertian shading at 32x32 and contrast with
# the white background (no white or light grey in the list).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (0.95, 0.85, 0.05),
    "green": (0.1, 0.65, 0.15),
    "cyan": (0.0, 0.75, 0.8),
    "blue": (0.1, 0.2, 0.9),
    "purple": (0.5, 0.1, 0.7),
    "pink": (1.0, 0.45, 0.7),
}

BOUND = 0.7  # every object lies inside |p| < BOUND

# Dimensions (world units).
SPHERE_RADIUS = 0.45
CUBE_HALF = 0.34
CONE_HALF_HEIGHT, CONE_RADIUS = 0.4, 0.42  # base at z = −h, apex at z = +h
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.35, 0.38  # axis z
TORUS_MAJOR, TORUS_MINOR = 0.36, 0.16  # axis z (lying flat)
# House: box body x∈[−0.28,0.28], y∈[−0.4,0.4], z∈[−0.4,0.1]; prism roof, ridge along y, from z=0.1 to z=0.45.
HOUSE_BODY_CENTRE = (0.0, 0.0, -0.15)
HOUSE_BODY_HALF = (0.28, 0.4, 0.25)
HOUSE_ROOF_BASE, HOUSE_ROOF_RIDGE = 0.1, 0.45  # z of the eaves and of the ridge
HOUSE_ROOF_HALF_WIDTH, HOUSE_ROOF_HALF_LENGTH = 0.36, 0.42  # overhang of 0.08 in x and 0.02 in y
ROOF_SHADE = 0.6  # roof albedo = ROOF_SHADE * body colour
DOOR_COLOUR = (0.35, 0.18, 0.05)  # dark brown
WINDOW_COLOUR = (0.6, 0.85, 1.0)  # light blue
DOOR_HALF_WIDTH, DOOR_TOP = 0.09, -0.1  # door: |y| < 0.09, z < −0.1 (from the ground at z = −0.4)
WINDOW_Y, WINDOW_Z = (0.16, 0.32), (-0.17, 0.0)  # windows: |y| in WINDOW_Y, z in WINDOW_Z


def check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def check_colour(colour: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known colours: {', '.join(COLOURS)}")


def sdf_box(p: Tensor, centre: tuple[float, float, float], half: tuple[float, float, float]) -> Tensor:
    """Exact box SDF. p: [N,3] -> [N]."""
    q = (p - p.new_tensor(centre)).abs() - p.new_tensor(half)
    # Explicit column maxima: Tensor.max over a size-3 dim is several times slower on CPU.
    inner = torch.maximum(torch.maximum(q[:, 0], q[:, 1]), q[:, 2]).clamp(max=0)
    return q.clamp(min=0).square().sum(-1).sqrt() + inner


def _sdf_capped_cone(p: Tensor, h: float, r_base: float) -> Tensor:
    """Exact SDF of a cone with axis z, base radius r_base at z=−h and apex at z=+h (Quilez's capped cone, r2=0)."""
    qx, qy = torch.hypot(p[:, 0], p[:, 1]), p[:, 2]
    k1x, k1y = 0.0, h
    k2x, k2y = -r_base, 2.0 * h
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r_base), torch.zeros_like(qx)))
    ca_y = qy.abs() - h
    t = (((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0.0, 1.0)
    cb_x, cb_y = qx - k1x + k2x * t, qy - k1y + k2y * t
    inside = (cb_x < 0) & (ca_y < 0)
    d = torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y).sqrt()
    return torch.where(inside, -d, d)


def _sdf_roof(p: Tensor) -> Tensor:
    """Triangular prism (ridge along y): max of its five face planes — exact inside, a lower bound outside."""
    h = HOUSE_ROOF_RIDGE - HOUSE_ROOF_BASE
    a = HOUSE_ROOF_HALF_WIDTH
    slope = ((p[:, 0].abs() - a) * h + (p[:, 2] - HOUSE_ROOF_BASE) * a) / math.hypot(h, a)
    bottom = HOUSE_ROOF_BASE - p[:, 2]
    ends = p[:, 1].abs() - HOUSE_ROOF_HALF_LENGTH
    return torch.maximum(torch.maximum(slope, bottom), ends)


def sdf(shape: str, p: Tensor) -> Tensor:
    """Signed distance (negative inside). p: [N,3] -> [N]."""
    check_shape(shape)
    if shape == "sphere":
        return p.norm(dim=-1) - SPHERE_RADIUS
    if shape == "cube":
        return sdf_box(p, (0.0, 0.0, 0.0), (CUBE_HALF,) * 3)
    if shape == "cone":
        return _sdf_capped_cone(p, CONE_HALF_HEIGHT, CONE_RADIUS)
    if shape == "cylinder":
        dx = torch.hypot(p[:, 0], p[:, 1]) - CYLINDER_RADIUS
        dz = p[:, 2].abs() - CYLINDER_HALF_HEIGHT
        return torch.hypot(dx.clamp(min=0), dz.clamp(min=0)) + torch.maximum(dx, dz).clamp(max=0)
    if shape == "torus":
        ring = torch.hypot(p[:, 0], p[:, 1]) - TORUS_MAJOR
        return torch.hypot(ring, p[:, 2]) - TORUS_MINOR
    # house
    return torch.minimum(sdf_box(p, HOUSE_BODY_CENTRE, HOUSE_BODY_HALF), _sdf_roof(p))


def occupancy(shape: str, p: Tensor) -> Tensor:
    """p: [N,3] -> bool [N], True inside the object."""
    return sdf(shape, p) < 0


def colour_rgb(colour: str | Tensor, n: int, like: Tensor) -> Tensor:
    """A colour name, an RGB [3] or per-point RGB [N,3] -> [N,3] on like's device/dtype."""
    if isinstance(colour, str):
        check_colour(colour)
        colour = like.new_tensor(COLOURS[colour])
    colour = colour.to(like)
    return colour.expand(n, 3) if colour.dim() == 1 else colour


def front_feature_albedo(p: Tensor, base: Tensor, front_sign: float = 1.0) -> Tensor:
    """Paint the house's door and windows on the wall at x = front_sign · 0.28. p: [N,3], base: [N,3] -> [N,3].

    front_sign=−1 paints them on the back wall (used to build a two-faced house for testing Janus detection).
    """
    x, y, z = p[:, 0] * front_sign, p[:, 1], p[:, 2]
    on_wall = (x > HOUSE_BODY_HALF[0] - 0.01) & (z < HOUSE_ROOF_BASE - 0.01)
    door = on_wall & (y.abs() < DOOR_HALF_WIDTH) & (z < DOOR_TOP)
    window = on_wall & (y.abs() > WINDOW_Y[0]) & (y.abs() < WINDOW_Y[1]) & (z > WINDOW_Z[0]) & (z < WINDOW_Z[1])
    out = torch.where(door[:, None], p.new_tensor(DOOR_COLOUR).expand_as(base), base)
    return torch.where(window[:, None], p.new_tensor(WINDOW_COLOUR).expand_as(base), out)


def albedo(shape: str, colour: str | Tensor, p: Tensor) -> Tensor:
    """Albedo at surface points. colour: name, RGB [3] or per-point RGB [N,3]; p: [N,3] -> [N,3] in [0,1].

    Plain objects are uniformly ``colour``. The house's roof is a darker shade of it, and its front wall (+x) carries
    a dark-brown door and two light-blue windows.
    """
    check_shape(shape)
    base = colour_rgb(colour, p.shape[0], p)
    if shape != "house":
        return base.clone()
    roof = p[:, 2] > HOUSE_ROOF_BASE - 1e-3
    base = torch.where(roof[:, None], ROOF_SHADE * base, base)
    return front_feature_albedo(p, base)
