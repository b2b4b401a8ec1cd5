"""Procedural objects with exact geometry: signed distance functions and albedo.

Every object is centred near the origin in the z-up world of :mod:`dreamgen.cameras` and fits inside the ball of
radius :data:`BOUND` (< 0.7), so a camera at the default distances (1.5–2.0) always sees all of it.

Three objects have a distinct front at +x (azimuth 0), the Janus probes (:data:`FRONT_FEATURE_SHAPES`):
- ``house``: a door and two windows painted on its front wall, a plain back wall (geometry mirror-symmetric in x);
- ``tv``: a thin upright box on a stand, a dark screen painted on its front face, a plain back (geometry symmetric);
- ``arrow``: a horizontal bar along x with a square-pyramid head at +x and a blunt end at −x (a *geometric* front).

Variants (:data:`VARIANTS`) turn any object into its two Janus references by folding space across the x = 0 plane,
for the SDF and the albedo alike: ``two_faced`` takes the object's value at (|x|, y, z) (its front half mirrored onto
the back: a door on both walls, a screen on both faces, an arrow with two heads) and ``faceless`` at (−|x|, y, z)
(its back half mirrored onto the front: no door, no screen, a bar blunt at both ends).

SDFs are exact (Euclidean distance) for the sphere, cube, cone, cylinder and torus. Unions (min) of exact SDFs, the
house roof and the arrow head (intersections of half-spaces) and the folded variants are exact in sign and a lower
bound of the distance outside, 1-Lipschitz everywhere: safe for sphere tracing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# New shapes go at the end, so a shape's index (the prior's object slot) keeps its meaning across versions.
SHAPES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder", "torus", "house", "tv", "arrow")
# Shapes whose front (+x) differs from their back (the Janus probes).
FRONT_FEATURE_SHAPES: tuple[str, ...] = ("house", "tv", "arrow")
# Those whose front feature is paint (the door and windows, the screen) rather than shape (the arrow's head).
PAINTED_FRONT_SHAPES: tuple[str, ...] = ("house", "tv")
# Holes through each object (the genus of its surface): the torus has one, every other object none.
GENUS: dict[str, int] = {"torus": 1}
VARIANTS: tuple[str, ...] = ("true", "two_faced", "faceless")

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
# TV: a thin box x∈[−0.06,0.06], y∈[−0.42,0.42], z∈[−0.17,0.37] on a neck and a flat foot (all symmetric in x).
TV_BODY_CENTRE, TV_BODY_HALF = (0.0, 0.0, 0.1), (0.06, 0.42, 0.27)
TV_NECK_CENTRE, TV_NECK_HALF = (0.0, 0.0, -0.26), (0.035, 0.07, 0.1)
TV_FOOT_CENTRE, TV_FOOT_HALF = (0.0, 0.0, -0.385), (0.15, 0.2, 0.025)
# Screen on the +x face: |y| < TV_SCREEN_HALF_WIDTH, z in TV_SCREEN_Z (a bezel of 0.06 at the sides, 0.07 below
# and 0.05 above, wide enough that the body colour still shows around it at 32–64 px).
TV_SCREEN_HALF_WIDTH, TV_SCREEN_Z = 0.36, (-0.1, 0.32)
SCREEN_COLOUR = (0.06, 0.06, 0.08)  # near black: contrasts with every world colour
# Arrow along x: a square bar x∈[−0.58,0.08], |y|,|z| < 0.1, and a square pyramid with its base (half side 0.24)
# at x = 0.08 and its apex at x = 0.58.
ARROW_SHAFT_CENTRE, ARROW_SHAFT_HALF = (-0.25, 0.0, 0.0), (0.33, 0.1, 0.1)
ARROW_HEAD_BASE, ARROW_HEAD_APEX, ARROW_HEAD_HALF = 0.08, 0.58, 0.24


def check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def check_colour(colour: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known colours: {', '.join(COLOURS)}")


def fold(p: Tensor, variant: str) -> Tensor:
    """The point whose true-object value ``variant`` takes at p: p itself, (|x|, y, z) for ``two_faced`` or
    (−|x|, y, z) for ``faceless``. p: [N,3] -> [N,3]."""
    if variant == "true":
        return p
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    x = p[:, :1].abs()
    return torch.cat([x if variant == "two_faced" else -x, p[:, 1:]], dim=1)


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


def _sdf_arrow_head(p: Tensor) -> Tensor:
    """Square pyramid pointing +x: max of its four slanted face planes and its base plane (a lower bound outside)."""
    length, half = ARROW_HEAD_APEX - ARROW_HEAD_BASE, ARROW_HEAD_HALF
    norm = math.hypot(length, half)
    along = (p[:, 0] - ARROW_HEAD_APEX) * half  # shared term of the four slanted planes
    side_y = (p[:, 1].abs() * length + along) / norm
    side_z = (p[:, 2].abs() * length + along) / norm
    return torch.maximum(torch.maximum(side_y, side_z), ARROW_HEAD_BASE - p[:, 0])


def sdf(shape: str, p: Tensor, variant: str = "true") -> Tensor:
    """Signed distance (negative inside) of the object or of one of its :data:`VARIANTS`. p: [N,3] -> [N]."""
    check_shape(shape)
    p = fold(p, variant)
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
    if shape == "house":
        return torch.minimum(sdf_box(p, HOUSE_BODY_CENTRE, HOUSE_BODY_HALF), _sdf_roof(p))
    if shape == "tv":
        stand = torch.minimum(sdf_box(p, TV_NECK_CENTRE, TV_NECK_HALF), sdf_box(p, TV_FOOT_CENTRE, TV_FOOT_HALF))
        return torch.minimum(sdf_box(p, TV_BODY_CENTRE, TV_BODY_HALF), stand)
    # arrow
    return torch.minimum(sdf_box(p, ARROW_SHAFT_CENTRE, ARROW_SHAFT_HALF), _sdf_arrow_head(p))


def nearest_surface_point(shape: str, p: Tensor, iters: int = 6, h: float = 1e-3) -> Tensor:
    """p: [N,3] -> the nearest point of the object's surface [N,3], by Newton steps p − sdf·∇sdf/|∇sdf|. One step
    lands on a box's face; the roof's and the arrow head's distances are lower bounds, so points near them take
    several, and a few far from the surface stop short of it."""
    eye = h * torch.eye(3, dtype=p.dtype, device=p.device)
    for _ in range(iters):
        d = sdf(shape, p)
        grad = torch.stack([sdf(shape, p + e) - d for e in eye], dim=-1)
        p = p - d[:, None] * torch.nn.functional.normalize(grad, dim=-1)
    return p


def occupancy(shape: str, p: Tensor, variant: str = "true") -> Tensor:
    """p: [N,3] -> bool [N], True inside the object (or the variant)."""
    return sdf(shape, p, variant) < 0


def colour_rgb(colour: str | Tensor, n: int, like: Tensor) -> Tensor:
    """A colour name, an RGB [3] or per-point RGB [N,3] -> [N,3] on like's device/dtype."""
    if isinstance(colour, str):
        check_colour(colour)
        colour = like.new_tensor(COLOURS[colour])
    colour = colour.to(like)
    return colour.expand(n, 3) if colour.dim() == 1 else colour


def _paint(mask: Tensor, rgb: tuple[float, float, float], base: Tensor) -> Tensor:
    return torch.where(mask[:, None], base.new_tensor(rgb).expand_as(base), base)


def _house_albedo(p: Tensor, base: Tensor) -> Tensor:
    """Darker roof; door and windows on the front wall (x = +0.28)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    base = torch.where((z > HOUSE_ROOF_BASE - 1e-3)[:, None], ROOF_SHADE * base, base)
    on_wall = (x > HOUSE_BODY_HALF[0] - 0.01) & (z < HOUSE_ROOF_BASE - 0.01)
    door = on_wall & (y.abs() < DOOR_HALF_WIDTH) & (z < DOOR_TOP)
    window = on_wall & (y.abs() > WINDOW_Y[0]) & (y.abs() < WINDOW_Y[1]) & (z > WINDOW_Z[0]) & (z < WINDOW_Z[1])
    return _paint(window, WINDOW_COLOUR, _paint(door, DOOR_COLOUR, base))


def _tv_albedo(p: Tensor, base: Tensor) -> Tensor:
    """The screen on the front face (x = +0.06)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    screen = ((x > TV_BODY_CENTRE[0] + TV_BODY_HALF[0] - 0.005) & (y.abs() < TV_SCREEN_HALF_WIDTH)
              & (z > TV_SCREEN_Z[0]) & (z < TV_SCREEN_Z[1]))
    return _paint(screen, SCREEN_COLOUR, base)


def albedo(shape: str, colour: str | Tensor, p: Tensor, variant: str = "true") -> Tensor:
    """Albedo at surface points. colour: name, RGB [3] or per-point RGB [N,3]; p: [N,3] -> [N,3] in [0,1].

    Objects are uniformly ``colour`` except: the house's roof is a darker shade of it and its front wall (+x) carries
    a dark-brown door and two light-blue windows; the tv's front face carries a near-black screen. ``variant``
    folds p as :func:`sdf` does, so the paint follows the geometry.
    """
    check_shape(shape)
    base = colour_rgb(colour, p.shape[0], p)
    p = fold(p, variant)
    if shape == "house":
        return _house_albedo(p, base)
    if shape == "tv":
        return _tv_albedo(p, base)
    return base.clone()
