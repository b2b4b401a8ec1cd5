"""Textured export: rasteriser, decimation, UV bake against an analytic colour field, GLB/OBJ round trips, turntable."""

from __future__ import annotations

import io
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from export_helpers import PEAK, SmoothBall, smooth_colour
from PIL import Image
from pygltflib import GLTF2
from scipy import ndimage

from dreamgen.errors import ConfigError
from dreamgen.export import (
    ExportConfig, decimate, export_mesh, extract_mesh, extract_textured_mesh, render_views, save_mesh, write_turntable,
)
from dreamgen.export.texture import dilate, rasterize, sample_bilinear

TEX = 128
CFG = ExportConfig(resolution=40, threshold=PEAK / 2, texture_size=TEX, texture_dilation=4, turntable_frames=0)


@pytest.fixture(scope="module")
def textured() -> trimesh.Trimesh:
    return extract_textured_mesh(SmoothBall(), CFG)


def texture_of(mesh: trimesh.Trimesh) -> np.ndarray:
    return np.asarray(mesh.visual.material.baseColorTexture)


def test_rasterize_matches_brute_force_point_in_triangle():
    rng = np.random.default_rng(0)
    h, w = 23, 31
    xy = rng.uniform([-5, -5], [w + 5, h + 5], size=(12, 3, 2))  # some triangles poke out of the image
    face, bary = rasterize(xy, h, w)
    centres = np.stack(np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5), axis=-1)  # [h,w,2] (x, y)

    def inside(tri: np.ndarray) -> np.ndarray:  # same-sign edge functions, either winding
        def edge(a, b):
            return (b[0] - a[0]) * (centres[..., 1] - a[1]) - (b[1] - a[1]) * (centres[..., 0] - a[0])

        e = [edge(tri[k], tri[(k + 1) % 3]) for k in range(3)]
        return np.all([v >= 0 for v in e], axis=0) | np.all([v <= 0 for v in e], axis=0)

    # Without depths the lowest-index covering triangle wins.
    expected = np.full((h, w), -1)
    for i in reversed(range(len(xy))):
        expected[inside(xy[i])] = i
    np.testing.assert_array_equal(face, expected)
    hit = face >= 0
    assert 0.2 < hit.mean() < 1.0
    np.testing.assert_allclose(bary[hit].sum(-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("nk,nkd->nd", bary[hit], xy[face[hit]]), centres[hit], atol=1e-9)
    assert (bary[hit] >= -1e-9).all() and (bary[~hit] == 0).all()


def test_rasterize_depth_test_keeps_nearest():
    big = [[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]]
    xy = np.array([big, big])
    # Triangle 1 is nearer (larger 1/depth) everywhere except near corner 2, where the two planes cross.
    inv_depth = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, -1.0]])
    face, bary = rasterize(xy, 20, 20, inv_depth)
    nearer_one = (bary * inv_depth[1]).sum(-1) > 1.0  # screen-space-linear 1/depth of triangle 1 beats 1.0
    assert nearer_one.any() and (~nearer_one).any()
    np.testing.assert_array_equal(face, np.where(nearer_one, 1, 0))


def test_sample_bilinear_interpolates_between_texel_centres():
    image = np.array([[[0.0], [1.0]], [[2.0], [3.0]]])  # rows top to bottom, v up
    # Texel centres: (col, row) -> u = (col + .5) / 2, v = 1 - (row + .5) / 2.
    np.testing.assert_allclose(sample_bilinear(image, np.array([[0.25, 0.75], [0.75, 0.25]]))[:, 0], [0.0, 3.0])
    np.testing.assert_allclose(sample_bilinear(image, np.array([[0.5, 0.5]]))[:, 0], [1.5])  # the middle
    np.testing.assert_allclose(sample_bilinear(image, np.array([[0.0, 1.0]]))[:, 0], [0.0])  # clamped at the edge


def test_dilate_copies_nearest_filled_texel_within_radius():
    image = np.zeros((1, 9, 3), dtype=np.uint8)
    filled = np.zeros((1, 9), dtype=bool)
    image[0, 2], image[0, 6] = 10, 200
    filled[0, [2, 6]] = True
    out = dilate(image, filled, 2)
    np.testing.assert_array_equal(out[0, :, 0], [10, 10, 10, 10, 10, 200, 200, 200, 200])
    np.testing.assert_array_equal(dilate(image, filled, 1)[0, :, 0], [0, 10, 10, 10, 0, 200, 200, 200, 0])


def test_decimate_respects_face_budget():
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20480 faces
    small = decimate(sphere, 2000)
    assert 1500 < len(small.faces) <= 2000
    assert small.is_watertight
    np.testing.assert_allclose(np.linalg.norm(small.vertices, axis=1), 1.0, atol=0.02)
    assert decimate(sphere, 0) is sphere and decimate(sphere, 30000) is sphere
    # The budget holds through extraction, for the vertex-colour path too.
    mesh = extract_mesh(SmoothBall(), ExportConfig(resolution=48, threshold=PEAK / 2, max_faces=1500))
    assert len(mesh.faces) <= 1500 and len(mesh.visual.vertex_colors) == len(mesh.vertices)


def test_baked_texture_reproduces_colour_field(textured):
    texture = texture_of(textured).astype(np.float64) / 255.0
    assert texture.shape == (TEX, TEX, 3)
    np.testing.assert_allclose(np.linalg.norm(textured.vertices, axis=1), 0.6, atol=0.01)
    # Inside every triangle (its centroid) and at every vertex (chart borders, where dilation matters):
    tri_uv = textured.visual.uv[textured.faces]
    for uv, points in [(tri_uv.mean(1), textured.triangles_center), (textured.visual.uv, textured.vertices)]:
        expected = smooth_colour(torch.tensor(points, dtype=torch.float32)).numpy()
        error = np.abs(sample_bilinear(texture, uv) - expected)
        # The field changes by ~0.3 per unit length; a texel spans ~0.02 units, so bilinear error is ~1e-3.
        assert error.mean() < 3.0 / 255 and error.max() < 0.05
    assert 0.2 < textured.metadata["texture_coverage"] < 0.95  # small charts + padding: low at 128 texels
    assert textured.metadata["density_threshold"] == PEAK / 2


def test_seam_dilation_fills_texels_near_islands():
    cfg = ExportConfig(resolution=40, threshold=PEAK / 2, texture_size=TEX, texture_dilation=3, turntable_frames=0)
    mesh = extract_textured_mesh(SmoothBall(), cfg)
    texture = texture_of(mesh)
    assert mesh.metadata["texture_coverage"] > 0
    # Covered texels are recomputed here: the same rasterisation of the UV triangles into the texel grid.
    face, _ = rasterize(np.stack([mesh.visual.uv[..., 0], 1.0 - mesh.visual.uv[..., 1]], -1)[mesh.faces] * TEX,
                        TEX, TEX)
    covered = face >= 0
    assert covered.mean() == pytest.approx(mesh.metadata["texture_coverage"])
    distance = ndimage.distance_transform_edt(~covered)
    background = (texture == 0).all(-1)  # the colour field is never black
    assert not background[distance <= 3].any()  # every texel within 3 of an island holds surface colour
    assert background[distance > 3].all()  # and no farther
    assert (distance > 3).any()


def test_glb_round_trip_uvs_texture_and_material(textured, tmp_path: Path):
    path = save_mesh(textured, tmp_path / "mesh.glb", "glb")
    loaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_allclose(loaded.vertices, textured.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, textured.faces)
    np.testing.assert_allclose(loaded.visual.uv, textured.visual.uv, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.baseColorTexture), texture_of(textured))

    gltf = GLTF2().load(str(path))
    blob = gltf.binary_blob()
    prim = gltf.meshes[0].primitives[0]
    acc = gltf.accessors[prim.attributes.TEXCOORD_0]
    view = gltf.bufferViews[acc.bufferView]
    start = view.byteOffset + acc.byteOffset
    uv = np.frombuffer(blob[start : start + acc.count * 8], dtype="<f4").reshape(-1, 2)
    # glTF's UV origin is the top-left corner: v is flipped relative to trimesh's.
    np.testing.assert_allclose(uv, np.stack([textured.visual.uv[:, 0], 1 - textured.visual.uv[:, 1]], 1), atol=1e-6)
    material = gltf.materials[prim.material].pbrMetallicRoughness
    assert material.metallicFactor == 0.0 and material.roughnessFactor == 1.0
    image = gltf.images[gltf.textures[material.baseColorTexture.index].source]
    assert image.mimeType == "image/png"
    iview = gltf.bufferViews[image.bufferView]
    png = Image.open(io.BytesIO(blob[iview.byteOffset : iview.byteOffset + iview.byteLength]))
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), texture_of(textured))


def test_obj_mtl_png_round_trip(textured, tmp_path: Path):
    path = save_mesh(textured, tmp_path / "model.obj", "obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mtl", "model.obj", "model.png"]
    mtl = (tmp_path / "model.mtl").read_text()
    assert "map_Kd model.png" in mtl and "Kd 1.0" in mtl
    loaded = trimesh.load(path, force="mesh", process=False)
    # The OBJ reader may renumber vertices; per-corner positions and UVs must survive in face order.
    np.testing.assert_allclose(loaded.vertices[loaded.faces], textured.vertices[textured.faces], atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv[loaded.faces], textured.visual.uv[textured.faces], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.image.convert("RGB")), texture_of(textured))
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.iterdir())


def test_turntable_renders_textured_like_vertex_coloured(textured, tmp_path: Path):
    # The same field exported both ways must look the same: a flipped or shifted texture lookup would not.
    coloured = extract_mesh(SmoothBall(), CFG)
    glb = save_mesh(textured, tmp_path / "tex.glb", "glb")
    loaded = trimesh.load(glb, force="mesh", process=False)
    views = [0.0, 120.0, 240.0]
    a = render_views(loaded, views, resolution=48).astype(np.float64)
    b = render_views(coloured, views, resolution=48).astype(np.float64)
    assert np.abs(a - b).mean() < 2.0 and np.percentile(np.abs(a - b), 99) < 25.0


def test_turntable_silhouette_matches_projected_sphere(textured):
    fov, res = 40.0, 64
    frame = render_views(textured, [30.0], elevation=20.0, resolution=res, fov=fov, supersample=4)[0]
    covered = (frame != 255).any(-1).mean()  # white background
    # The camera sits at distance d = 1.05 r / sin(fov/2) from the centre: the sphere subtends half-angle
    # asin(r/d) and projects to a disc of radius focal * tan(that) pixels.
    half = math.asin(math.sin(math.radians(fov) / 2) / 1.05)
    disc = math.pi * (0.5 * res / math.tan(math.radians(fov) / 2) * math.tan(half)) ** 2 / res**2
    assert covered == pytest.approx(disc, rel=0.03)


def test_export_mesh_textured_run_folder(tmp_path: Path):
    cfg = ExportConfig(formats=["glb", "obj"], resolution=32, threshold=PEAK / 2, texture_size=64,
                       turntable_frames=4, turntable_resolution=32)
    paths = export_mesh(SmoothBall(), cfg, tmp_path)
    expected = {"glb": "mesh.glb", "obj": "mesh.obj", "turntable": "turntable.gif"}
    assert paths == {key: tmp_path / name for key, name in expected.items()}
    names = ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.png", "turntable.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left behind
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in tmp_path.iterdir())
    frames = iio.imread(paths["turntable"], index=None)
    assert frames.shape[:3] == (4, 32, 32)
    assert not np.array_equal(frames[0], frames[1])  # the colour field differs around the orbit


def test_write_turntable_from_vertex_coloured_obj(tmp_path: Path):
    mesh = extract_mesh(SmoothBall(), ExportConfig(resolution=24, threshold=PEAK / 2, texture=False))
    obj = save_mesh(mesh, tmp_path / "mesh.obj", "obj")
    out = write_turntable(obj, tmp_path / "spin.gif", n_frames=3, resolution=24)
    assert iio.imread(out, index=None).shape[:3] == (3, 24, 24)


def test_open_surface_is_drawn_from_both_sides():
    # A single square in the plane z = 0: no back-face culling for open surfaces, so the orbit sees it from +z and -z.
    quad = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    quad.visual.vertex_colors = [200, 30, 30, 255]
    front, back = render_views(quad, [0.0, 180.0], elevation=0.0, resolution=32)
    assert (front != 255).any(-1).mean() > 0.3
    np.testing.assert_array_equal((front != 255).any(-1), (back != 255).any(-1)[:, ::-1])  # mirrored silhouette


@pytest.mark.parametrize("key, value", [("texture_size", 8), ("max_faces", 2), ("texture_dilation", -1),
                                        ("texture_chart_area", 1.5), ("turntable_resolution", 4)])
def test_config_rejects_bad_texture_values(key, value):
    with pytest.raises(ConfigError, match=key):
        ExportConfig(**{key: value})
