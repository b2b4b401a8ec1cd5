"""The exported file in glTF's conventions: +Y up, front +Z, right-handed, origin at the bottom centre, smooth
creased normals, asset extras; and a turntable that reads the file like a viewer, so an axis mistake shows."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from export_helpers import PEAK, SmoothBall, WorldObject, taper
from pygltflib import GLTF2

from dreamgen.errors import ConfigError
from dreamgen.export import ExportConfig, export_mesh, extract_mesh, save_mesh, write_turntable
from dreamgen.export.asset import GLTF_FROM_WORLD, crease_normals

CFG = ExportConfig(resolution=40, threshold=PEAK / 2, texture=False, turntable_frames=0)
RED, GREEN, BLUE, GREY = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)


def marked_directions(p: torch.Tensor) -> torch.Tensor:
    """Red on the world's front (+x), green on its top (+z), blue on its right seen from the front (+y)."""
    out = torch.tensor(GREY).expand(len(p), 3).clone()
    for axis, colour in ((0, RED), (2, GREEN), (1, BLUE)):
        out[p[:, axis] > 0.35] = torch.tensor(colour)
    return out


def colour_positions(mesh: trimesh.Trimesh, rgb: tuple[float, float, float]) -> np.ndarray:
    return mesh.vertices[(mesh.visual.vertex_colors[:, :3] == np.array(rgb) * 255).all(axis=1)]


def test_front_faces_plus_z_top_plus_y_right_plus_x(tmp_path: Path):
    paths = export_mesh(SmoothBall(r=0.5, colour=marked_directions), ExportConfig(
        formats=["glb", "obj"], resolution=40, threshold=PEAK / 2, texture=False, turntable_frames=0), tmp_path)
    glb = trimesh.load(paths["glb"], force="mesh", process=False)
    centre = 0.5 * (glb.bounds[0] + glb.bounds[1])
    front, top, right = (colour_positions(glb, c) - centre for c in (RED, GREEN, BLUE))
    assert len(front) > 20 and len(top) > 20 and len(right) > 20
    assert (front[:, 2] > 0.3).all()  # the front, where azimuth 0 looks from, faces +Z
    assert (top[:, 1] > 0.3).all()  # up is +Y
    assert (right[:, 0] > 0.3).all()  # right-handed: the front's right-hand side is +X
    # OBJ: the same axes, and normals.
    obj = trimesh.load(paths["obj"], force="mesh", process=False)
    np.testing.assert_allclose(obj.vertices[obj.faces], glb.vertices[glb.faces], atol=1e-6)
    assert "\nvn " in paths["obj"].read_text()
    np.testing.assert_allclose(GLTF_FROM_WORLD @ GLTF_FROM_WORLD.T, np.eye(3))
    assert np.linalg.det(GLTF_FROM_WORLD) == pytest.approx(1.0)


@pytest.mark.parametrize("origin", ["bottom", "center"])
def test_origin(origin, tmp_path: Path):
    cone = WorldObject("cone")
    paths = export_mesh(cone, ExportConfig(resolution=40, threshold=PEAK / 2, texture=False, turntable_frames=0,
                                           origin=origin), tmp_path)
    mesh = trimesh.load(paths["glb"], force="mesh")
    lo, hi = mesh.bounds
    np.testing.assert_allclose((lo + hi)[[0, 2]], 0.0, atol=1e-6)  # centred across
    assert (lo[1] if origin == "bottom" else lo[1] + hi[1]) == pytest.approx(0.0, abs=1e-6)
    apex = mesh.vertices[mesh.vertices[:, 1] > hi[1] - 0.1 * (hi[1] - lo[1])]
    assert np.linalg.norm(apex[:, [0, 2]], axis=1).max() < 0.1  # the apex: on the vertical axis, at the top


def test_crease_normals_split_sharp_edges_only():
    box = trimesh.creation.box()
    source, faces, normals = crease_normals(box.vertices, box.faces, 30.0)
    assert len(source) == 24  # each corner once per adjoining side
    np.testing.assert_allclose(normals[faces], np.repeat(box.face_normals[:, None], 3, axis=1), atol=1e-12)
    np.testing.assert_array_equal(box.vertices[source[faces]], box.vertices[box.faces])
    source, _, normals = crease_normals(box.vertices, box.faces, 100.0)  # 90-degree edges are now smooth
    assert len(source) == 8
    np.testing.assert_allclose(np.abs(normals), 1 / np.sqrt(3), atol=1e-12)


def test_textured_normals_are_smooth_across_uv_seams(tmp_path: Path):
    cfg = ExportConfig(resolution=40, threshold=PEAK / 2, texture_size=64, turntable_frames=0)
    glb = export_mesh(SmoothBall(), cfg, tmp_path)["glb"]
    scene = trimesh.load(glb, process=False)
    mesh = next(iter(scene.geometry.values()))
    normals = mesh.vertex_normals
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    radial = mesh.vertices - 0.5 * (mesh.bounds[0] + mesh.bounds[1])
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    assert np.einsum("nd,nd->n", normals, radial).min() > 0.99  # smooth: the sphere's own normals, not facets
    # The two sides of a UV seam share their position and their normal, so the seam cannot show.
    _, weld, counts = np.unique(mesh.vertices, axis=0, return_inverse=True, return_counts=True)
    seam = counts[weld.reshape(-1)] > 1
    assert seam.sum() > 50
    first = np.full(counts.size, -1)
    first[weld.reshape(-1)[::-1]] = np.arange(len(weld))[::-1]
    np.testing.assert_allclose(normals[seam], normals[first[weld.reshape(-1)[seam]]], atol=1e-6)


def test_asset_extras_carry_metadata(tmp_path: Path):
    glb = export_mesh(SmoothBall(), CFG, tmp_path, metadata={
        "prompt": "a ball", "loss": "sds", "seed": 7, "final_loss": float("inf"), "eval": {"volumetric_iou": 0.5}})
    extras = GLTF2().load(str(glb["glb"])).asset.extras
    assert extras["prompt"] == "a ball" and extras["seed"] == 7 and extras["eval"] == {"volumetric_iou": 0.5}
    assert extras["final_loss"] is None  # JSON has no Inf
    assert extras["up"] == "+Y" and extras["front"] == "+Z" and extras["origin"] == "bottom"
    assert extras["dreamgen_version"]


@pytest.mark.parametrize("key, value", [("origin", "top"), ("crease_angle", -1.0), ("crease_angle", 200.0),
                                        ("opening_radius", float("nan")), ("closing_radius", -2.0),
                                        ("smooth_iterations", -1),
                                        ("max_hole_edges", -5)])
def test_config_rejects_bad_convention_and_cleanup_values(key, value):
    with pytest.raises(ConfigError, match=rf"export\.{key}="):
        ExportConfig(**{key: value})


def test_turntable_shows_an_upright_cone_apex_up(tmp_path: Path):
    # The turntable reads the file like a glTF viewer: had the export kept dreamgen's Z-up coordinates, the cone
    # would lie on its side, its apex pointing at the camera (the control below).
    cfg = ExportConfig(resolution=48, threshold=PEAK / 2, texture=False, turntable_frames=4, turntable_resolution=64)
    paths = export_mesh(WorldObject("cone"), cfg, tmp_path)
    for frame in iio.imread(paths["turntable"], index=None):
        top, bottom = taper((frame < 250).any(axis=-1))
        assert top < 0.5 * bottom, (top, bottom)

    z_up = save_mesh(extract_mesh(WorldObject("cone"), cfg), tmp_path / "z-up.glb", "glb")
    frame = iio.imread(write_turntable(z_up, tmp_path / "z-up.gif", n_frames=1, resolution=64), index=0)
    top, bottom = taper((frame < 250).any(axis=-1))
    assert top > 0.8 * bottom
