"""Export cleanup on synthetic fields with known topology: handles close, floaters and cavities go, small holes are
filled, smoothing keeps the volume, a real torus keeps its hole. Genus from the Euler characteristic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from export_helpers import PEAK, WorldObject

from dreamgen.export import ExportConfig, extract_mesh
from dreamgen.export.cleanup import fill_holes, genus, taubin_smooth

RES = 64
CELL = 2.0 / (RES - 1)  # the lattice spacing over [-1, 1]


class Field:
    """Density PEAK * sigmoid(-sdf / 0.01) of an SDF given as a function, grey everywhere."""

    radius = 1.0

    def __init__(self, sdf):
        self.sdf = sdf

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid(-self.sdf(points) / 0.01)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full_like(points, 0.5)


def ball(p: torch.Tensor, centre=(0.0, 0.0, 0.0), r: float = 0.4) -> torch.Tensor:
    return (p - torch.tensor(centre)).norm(dim=-1) - r


def handle(p: torch.Tensor) -> torch.Tensor:
    """A ball with a thin ring on its side (ring radius 0.08, tube radius 0.03, in the xz-plane): a handle whose hole
    is ~2.5 lattice cells across at resolution 64, the kind of loop optimisation noise leaves."""
    q = p - torch.tensor([0.43, 0.0, 0.0])
    ring = torch.hypot(torch.hypot(q[:, 0], q[:, 2]) - 0.08, q[:, 1]) - 0.03
    return torch.minimum(ball(p), ring)


def drip(p: torch.Tensor) -> torch.Tensor:
    """A ball with a drip hanging below it: a rod of radius 0.04 (2.5 cells across) reaching down to z = -0.6."""
    rod = torch.maximum(torch.hypot(p[:, 0], p[:, 1]) - 0.04, torch.maximum(-0.6 - p[:, 2], p[:, 2]))
    return torch.minimum(ball(p), rod)


def cfg(**kw) -> ExportConfig:
    return ExportConfig(resolution=RES, threshold=PEAK / 2, texture=False, turntable_frames=0, **kw)


def test_genus_from_euler_characteristic():
    assert genus(trimesh.creation.icosphere(subdivisions=2)) == 0
    assert genus(trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)) == 1
    box = trimesh.creation.box().apply_translation([5, 0, 0])
    two = trimesh.util.concatenate([trimesh.creation.torus(1.0, 0.3), box])
    assert genus(two) == 1  # summed over pieces
    open_box = trimesh.creation.box()
    open_box.update_faces(np.arange(len(open_box.faces)) > 1)
    assert genus(open_box) is None  # undefined for an open surface


def test_closing_fills_a_thin_handle():
    with_ring = extract_mesh(Field(handle), cfg(opening_radius=0, closing_radius=0))
    assert with_ring.is_watertight and genus(with_ring) == 1  # the ring is really there without the cleanup
    closed = extract_mesh(Field(handle), cfg(opening_radius=0, closing_radius=3 * CELL))
    assert closed.is_watertight and genus(closed) == 0
    # Only the ring's hole is filled: the ball itself is where it was.
    far = np.linalg.norm(closed.vertices - [0.43, 0.0, 0.0], axis=1) > 0.2
    np.testing.assert_allclose(np.linalg.norm(closed.vertices[far], axis=1), 0.4, atol=0.01)


def test_closing_fills_a_hollow_behind_a_narrow_mouth_but_not_a_narrow_torus_hole():
    r = 0.05  # the closing fills gaps up to ~0.1 across, hollows behind mouths up to ~0.2 across

    def shell(p):  # a ball hollow inside, its cavity open through a mouth 0.12 across at the top
        mouth = torch.maximum(torch.hypot(p[:, 0], p[:, 1]) - 0.06, -p[:, 2])
        return torch.maximum(torch.maximum(ball(p, r=0.45), -ball(p, r=0.35)), -mouth)

    hollow = extract_mesh(Field(shell), cfg(closing_radius=0))
    assert genus(hollow) == 0 and hollow.volume == pytest.approx(4 / 3 * math.pi * (0.45**3 - 0.35**3), rel=0.05)
    solid = extract_mesh(Field(shell), cfg(closing_radius=r))
    assert genus(solid) == 0 and solid.volume == pytest.approx(4 / 3 * math.pi * 0.45**3, rel=0.03)

    def torus(p):  # its hole is 0.18 across: wider than the closing fills, narrower than the hollows it fills
        return torch.hypot(torch.hypot(p[:, 0], p[:, 1]) - 0.25, p[:, 2]) - 0.16

    assert genus(extract_mesh(Field(torus), cfg(closing_radius=r))) == 1
    assert genus(extract_mesh(Field(torus), cfg(closing_radius=2 * r))) == 0  # within reach of a larger closing


def test_opening_removes_a_drip():
    dripping = extract_mesh(Field(drip), cfg(opening_radius=0))
    assert dripping.vertices[:, 2].min() < -0.55
    # Radius 2 cells (the default's size in cells at resolution 128): the rod is thinner than the ball.
    clean = extract_mesh(Field(drip), cfg(opening_radius=2 * CELL))
    assert clean.is_watertight and genus(clean) == 0
    assert clean.vertices[:, 2].min() > -0.42  # the ball's bottom is at -0.4
    np.testing.assert_allclose(np.linalg.norm(clean.vertices, axis=1), 0.4, atol=0.015)


def test_the_world_torus_keeps_its_hole():
    torus = extract_mesh(WorldObject("torus"), cfg(opening_radius=2 * CELL, closing_radius=2 * CELL))
    assert torus.is_watertight and genus(torus) == 1
    assert torus.volume == pytest.approx(2 * math.pi**2 * 0.36 * 0.16**2, rel=0.03)


def test_floater_goes_and_cavity_is_filled():
    floater = Field(lambda p: torch.minimum(ball(p, (-0.2, 0.0, 0.0)), ball(p, (0.6, 0.3, 0.0), 0.1)))
    assert len(extract_mesh(floater, cfg(largest_component=False)).split(only_watertight=False)) == 2
    kept = extract_mesh(floater, cfg())
    assert len(kept.split(only_watertight=False)) == 1 and kept.vertices[:, 0].max() < 0.25
    hollow = Field(lambda p: torch.maximum(ball(p, r=0.5), -ball(p, r=0.3)))  # a shell around an empty cavity
    cavity_kept = extract_mesh(hollow, cfg(largest_component=False, closing_radius=0))
    assert len(cavity_kept.split(only_watertight=False)) == 2
    solid = extract_mesh(hollow, cfg())
    assert genus(solid) == 0 and solid.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.02)


def test_fill_holes_closes_small_holes_only():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    near_pole = sphere.triangles_center[:, 2] > 0.97  # a small cap: a hole of a few edges
    small = trimesh.Trimesh(sphere.vertices, sphere.faces[~near_pole], process=False)
    assert not small.is_watertight
    filled = fill_holes(small, max_edges=16)
    assert filled.is_watertight and filled.is_winding_consistent and genus(filled) == 0
    assert filled.volume == pytest.approx(sphere.volume, rel=0.01)
    half = trimesh.Trimesh(sphere.vertices, sphere.faces[sphere.triangles_center[:, 2] < 0], process=False)
    assert fill_holes(half, max_edges=16) is half  # the equator is an opening of ~64 edges: left open
    assert fill_holes(small, max_edges=0) is small


def test_taubin_smoothing_removes_noise_and_keeps_volume():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    noise = np.random.default_rng(0).normal(0.0, 0.01, len(sphere.vertices))
    noisy = trimesh.Trimesh(sphere.vertices * (1 + noise)[:, None], sphere.faces)
    smooth = taubin_smooth(noisy, 10)
    radius = np.linalg.norm(smooth.vertices, axis=1)
    assert radius.std() < 0.5 * np.linalg.norm(noisy.vertices, axis=1).std()
    assert smooth.volume == pytest.approx(sphere.volume, rel=0.01)  # Taubin does not shrink like plain Laplacian
    assert taubin_smooth(noisy, 0) is noisy


class Surface:
    """A surface field (like DMTet): the marching-cubes mesh of an SDF on a 96³ lattice over [-1, 1]³."""

    radius = 1.0

    def __init__(self, sdf):
        from skimage.measure import marching_cubes

        axis = torch.linspace(-1.0, 1.0, 96)
        values = sdf(torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
        verts, faces, _, _ = marching_cubes(values.reshape(96, 96, 96).numpy(), 0.0, gradient_direction="descent")
        self.verts, self.faces = torch.tensor(verts * 2.0 / 95 - 1.0), torch.tensor(faces.astype(np.int64))

    def surface(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.verts, self.faces

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full_like(points, 0.5)


def test_a_surface_field_gets_the_same_cleanup():
    ring = Surface(handle)
    raw = extract_mesh(ring, cfg(opening_radius=0, closing_radius=0))
    assert raw.is_watertight and genus(raw) == 1  # the surface's own handle, exported as it is
    closed = extract_mesh(ring, cfg(opening_radius=0, closing_radius=3 * CELL))
    assert closed.is_watertight and genus(closed) == 0
    far = np.linalg.norm(closed.vertices - [0.43, 0.0, 0.0], axis=1) > 0.2
    np.testing.assert_allclose(np.linalg.norm(closed.vertices[far], axis=1), 0.4, atol=0.01)

    clean = extract_mesh(Surface(drip), cfg(opening_radius=2 * CELL))
    assert clean.is_watertight and genus(clean) == 0 and clean.vertices[:, 2].min() > -0.42

    torus = extract_mesh(Surface(lambda p: torch.hypot(torch.hypot(p[:, 0], p[:, 1]) - 0.36, p[:, 2]) - 0.16),
                         cfg(opening_radius=2 * CELL, closing_radius=2 * CELL))
    assert torus.is_watertight and genus(torus) == 1
    assert torus.volume == pytest.approx(2 * math.pi**2 * 0.36 * 0.16**2, rel=0.03)


def test_a_surface_keeps_its_edges_through_the_cleanup():
    """The lattice holds the surface's signed distance: faces stay where they were, corners move by less than a
    lattice cell (the opening's ball rounds them a little, as it does a density field's)."""
    box = Surface(lambda p: (p.abs() - 0.34).amax(-1))
    raw = extract_mesh(box, cfg(opening_radius=0, closing_radius=0))
    cube = extract_mesh(box, cfg())
    assert cube.is_watertight and genus(cube) == 0
    assert cube.volume == pytest.approx(0.68**3, rel=0.01)
    assert np.abs(cube.vertices).max() == pytest.approx(0.34, abs=0.005)
    corner = lambda m: np.abs(m.vertices).sum(1).max()  # noqa: E731  (L1 norm: 3 × 0.34 at a sharp corner)
    assert corner(raw) - CELL < corner(cube) <= corner(raw)
