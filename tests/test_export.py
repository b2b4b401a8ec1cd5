"""Mesh export against analytic density fields whose surface, volume and colours are known in closed form."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from pygltflib import GLTF2

from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.export import ExportConfig, export_mesh, extract_mesh, save_mesh
from dreamgen.geometry.isosurface import auto_threshold, density_grid

PEAK = 50.0
R0 = 0.5


def red_blue(p: torch.Tensor) -> torch.Tensor:
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    return torch.where(p[:, :1] > 0, red, blue)


def gradient_colour(p: torch.Tensor) -> torch.Tensor:
    return (p + 1.0) / 2.0  # maps the [-1,1]^3 scene onto the RGB cube


class Spheres:
    """Sum of smooth balls: density PEAK * sigmoid((r - |x - c|) / width), so the PEAK/2 level set is exact."""

    def __init__(self, balls=((0.0, 0.0, 0.0, R0),), colour=red_blue, radius=1.0, width=0.02, background=0.0):
        self.balls = torch.tensor(balls, dtype=torch.float32)
        self.colour, self.radius, self.width, self.background = colour, radius, width, background

    def density(self, points: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(points, self.balls[:, :3])  # [N, balls]
        return self.background + (PEAK * torch.sigmoid((self.balls[:, 3] - dist) / self.width)).sum(-1)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.colour(points)


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(Spheres(), ExportConfig(resolution=64, threshold=PEAK / 2))


def test_density_grid_layout():
    field = Spheres(radius=1.0)
    grid, spacing, origin = density_grid(field, resolution=9, chunk=100)  # chunk smaller than 9^3 points
    assert grid.shape == (9, 9, 9)
    assert spacing == pytest.approx(0.25)
    np.testing.assert_allclose(origin, [-1.0, -1.0, -1.0])
    i, j, k = 2, 5, 7
    point = torch.from_numpy(origin + spacing * np.array([[i, j, k]])).float()
    assert grid[i, j, k] == pytest.approx(field.density(point).item(), rel=1e-5)


def test_sphere_volume_area_and_orientation(sphere_mesh):
    assert sphere_mesh.is_watertight
    assert sphere_mesh.is_winding_consistent
    assert sphere_mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * R0**3, rel=0.03)  # > 0: normals point out
    assert sphere_mesh.area == pytest.approx(4.0 * math.pi * R0**2, rel=0.03)
    # Outward: each face normal points away from the centre, i.e. from the dense side to the empty side.
    outward = np.einsum("ij,ij->i", sphere_mesh.face_normals, sphere_mesh.triangles_center)
    assert (outward > 0).all()
    np.testing.assert_allclose(np.linalg.norm(sphere_mesh.vertices, axis=1), R0, atol=0.01)
    assert sphere_mesh.metadata["density_threshold"] == PEAK / 2


@pytest.mark.parametrize("rule", ["mean_occupied", "otsu"])
def test_auto_threshold_between_plateaus(rule):
    grid, _, _ = density_grid(Spheres(), resolution=48)
    level = auto_threshold(grid, rule)
    assert 0.05 * PEAK < level < 0.95 * PEAK
    mesh = extract_mesh(Spheres(), ExportConfig(resolution=48, threshold_rule=rule))
    assert mesh.metadata["density_threshold"] == pytest.approx(level)
    # Between the plateaus the level set sits inside the sigmoid's transition band around R0.
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - R0).max() < 4 * 0.02


def test_auto_threshold_ignores_faint_background():
    # A haze below floor_ratio * max is empty space, so it must not drag the mean_occupied level down.
    clean, _, _ = density_grid(Spheres(), resolution=48)
    hazy, _, _ = density_grid(Spheres(background=0.01), resolution=48)
    assert auto_threshold(hazy) == pytest.approx(auto_threshold(clean), rel=0.02)
    assert hazy.mean() < auto_threshold(hazy) / 5  # the plain mean over everything would be far lower


def test_largest_component_drops_small_blob():
    balls = ((-0.3, 0.0, 0.0, 0.4), (0.65, 0.0, 0.0, 0.12))
    both = extract_mesh(Spheres(balls), ExportConfig(resolution=64, threshold=PEAK / 2, largest_component=False))
    assert len(both.split(only_watertight=False)) == 2
    main = extract_mesh(Spheres(balls), ExportConfig(resolution=64, threshold=PEAK / 2, largest_component=True))
    assert len(main.split(only_watertight=False)) == 1
    assert main.is_watertight
    assert main.volume == pytest.approx(4.0 / 3.0 * math.pi * 0.4**3, rel=0.03)
    assert main.vertices[:, 0].max() < 0.2  # nothing left from the blob around x = 0.65
    assert len(main.visual.vertex_colors) == len(main.vertices)


def test_vertex_colours_follow_albedo(sphere_mesh):
    colours = sphere_mesh.visual.vertex_colors
    assert colours.dtype == np.uint8 and colours.shape == (len(sphere_mesh.vertices), 4)
    x = sphere_mesh.vertices[:, 0]
    assert (x > 0).sum() > 100 and (x < 0).sum() > 100
    np.testing.assert_array_equal(colours[x > 0], np.tile([255, 0, 0, 255], ((x > 0).sum(), 1)))
    np.testing.assert_array_equal(colours[x < 0], np.tile([0, 0, 255, 255], ((x < 0).sum(), 1)))


def test_vertex_colours_continuous_albedo():
    mesh = extract_mesh(Spheres(colour=gradient_colour), ExportConfig(resolution=32, threshold=PEAK / 2))
    expected = np.round((mesh.vertices + 1.0) / 2.0 * 255.0)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3], expected, atol=1)


class Slab:
    """Dense for |z| < 0.5 across the whole scene: touches four faces of the bounding box."""

    radius = 1.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return PEAK * torch.sigmoid((0.5 - points[:, 2].abs()) / 0.02)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(points)


def test_object_touching_bound_is_closed_at_the_box():
    # The mesh is closed by caps just inside the bound instead of being open where the slab meets the box.
    # No smoothing: it would round the caps' edges, and this is about where extraction puts them.
    mesh = extract_mesh(Slab(), ExportConfig(resolution=32, threshold=PEAK / 2, smooth_iterations=0))
    assert mesh.is_watertight and mesh.volume > 0
    half = 1.0 - (2.0 / 31) / 2  # the level PEAK/2 lies halfway between the emptied border sample and the next
    np.testing.assert_allclose(np.abs(mesh.vertices[:, :2]).max(axis=0), half, atol=1e-4)
    assert mesh.volume == pytest.approx((2 * half) ** 2 * 1.0, rel=0.01)


class Ball:
    """A two-valued field: 10 inside a ball, exactly 0 outside."""

    radius = 1.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 10.0 * (points.norm(dim=-1) < R0).float()

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full_like(points, 0.5)


@pytest.mark.parametrize("rule", ["mean_occupied", "otsu"])
def test_two_valued_field_threshold_halfway(rule):
    grid, _, _ = density_grid(Ball(), resolution=32)
    assert auto_threshold(grid, rule) == 5.0
    mesh = extract_mesh(Ball(), ExportConfig(resolution=32, threshold_rule=rule))
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4.0 / 3.0 * math.pi * R0**3, rel=0.1)  # staircase field: coarse surface
    assert (mesh.visual.vertex_colors == [128, 128, 128, 255]).all()


def test_empty_field_raises():
    with pytest.raises(DreamgenError, match="empty"):
        extract_mesh(Spheres(((5.0, 5.0, 5.0, 0.1),), width=0.001), ExportConfig(resolution=16))


@pytest.mark.parametrize("threshold", [75.0, 0.004])  # above the densest sample; below the emptiest one
def test_threshold_outside_field_names_threshold(threshold):
    with pytest.raises(DreamgenError, match=rf"threshold {threshold:g} .*export\.threshold="):
        extract_mesh(Spheres(background=0.005), ExportConfig(resolution=16, threshold=threshold))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="stl"):
        ExportConfig(formats=["glb", "stl"])
    with pytest.raises(ConfigError, match="threshold_rule"):
        ExportConfig(threshold_rule="median")
    with pytest.raises(ConfigError, match="threshold"):
        ExportConfig(threshold=-1.0)


def test_glb_round_trip(sphere_mesh, tmp_path: Path):
    path = save_mesh(sphere_mesh, tmp_path / "sphere.glb", "glb")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(sphere_mesh.vertices)
    np.testing.assert_allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, sphere_mesh.visual.vertex_colors)

    gltf = GLTF2().load(str(path))
    prim = gltf.meshes[0].primitives[0]
    assert prim.attributes.COLOR_0 is not None
    assert gltf.accessors[prim.attributes.COLOR_0].count == len(sphere_mesh.vertices)
    assert gltf.accessors[prim.attributes.POSITION].count == len(sphere_mesh.vertices)


def test_obj_round_trip(sphere_mesh, tmp_path: Path):
    path = save_mesh(sphere_mesh, tmp_path / "sphere.obj", "obj")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(sphere_mesh.vertices)
    assert len(loaded.faces) == len(sphere_mesh.faces)
    np.testing.assert_allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-6)
    assert loaded.visual.kind == "vertex"
    np.testing.assert_allclose(loaded.visual.vertex_colors, sphere_mesh.visual.vertex_colors, atol=1)
    assert loaded.volume == pytest.approx(sphere_mesh.volume, rel=1e-6)


def test_failed_write_keeps_previous_file(sphere_mesh, tmp_path: Path, monkeypatch):
    dest = tmp_path / "mesh.glb"
    dest.write_bytes(b"previous export")

    def broken_export(self, file_obj=None, file_type=None, **kwargs):
        file_obj.write(b"half a mesh")  # fail midway through writing
        raise RuntimeError("disk full")

    monkeypatch.setattr(trimesh.Trimesh, "export", broken_export)
    with pytest.raises(RuntimeError, match="disk full"):
        save_mesh(sphere_mesh, dest, "glb")
    assert dest.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]


def test_export_mesh_writes_each_format(tmp_path: Path):
    cfg = ExportConfig(formats=["glb", "obj"], resolution=32, threshold=PEAK / 2, texture=False, turntable_frames=0)
    paths = export_mesh(Spheres(), cfg, tmp_path / "run", stem="coarse")
    assert paths == {"glb": tmp_path / "run" / "coarse.glb", "obj": tmp_path / "run" / "coarse.obj"}
    glb = trimesh.load(paths["glb"], force="mesh")
    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    assert len(glb.vertices) == len(obj.vertices) > 0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["coarse.glb", "coarse.obj"]
    assert paths["glb"].stat().st_mode & 0o777 == 0o644
