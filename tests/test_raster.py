"""Torch rasteriser against analytic coverage, depth and barycentrics, gradients (silhouette included) vs finite
differences, and the mesh renderer (dict, regularisers, gradients into the DMTet parameters)."""

import math

import pytest
import torch

from dreamgen.cameras import CameraConfig, make_cameras, rays
from dreamgen.geometry.dmtet import DMTetConfig, DMTetGeometry
from dreamgen.geometry.hashgrid import HashGridConfig
from dreamgen.render.background import Background, BackgroundConfig
from dreamgen.render.mesh_renderer import (MeshRenderer, MeshRendererConfig, laplacian_loss,
                                           normal_consistency_loss)
from dreamgen.render.raster import project, rasterize, rasterize_screen

TINY_GRID = HashGridConfig(n_levels=3, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def screen(xy, faces, size=32, w=None):
    xy = torch.as_tensor(xy, dtype=D)[None]
    w = torch.ones(xy.shape[:2], dtype=D) if w is None else w
    return rasterize_screen(xy, w, torch.as_tensor(faces), size, size)


def tri_area(t):
    (x0, y0), (x1, y1), (x2, y2) = t
    return 0.5 * abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))


# Front-facing = counter-clockwise on screen (rows point down).
TRI = [[5.3, 4.1], [11.6, 28.4], [27.2, 9.7]]


def test_coverage_of_a_triangle_is_its_area_and_back_faces_are_culled():
    frags = screen(TRI, [[0, 1, 2]])
    assert abs(float(frags.coverage.sum()) - tri_area(TRI)) < 1e-9
    assert float(frags.coverage.max()) == 1.0 and float(frags.coverage.min()) == 0.0
    # The fragments are exactly the pixels whose centre is inside, plus the partly covered fringe.
    assert ((frags.face_id() >= 0) == (frags.coverage > 0)).all()
    assert float(screen([TRI[0], TRI[2], TRI[1]], [[0, 1, 2]]).coverage.sum()) == 0.0
    # Clipped by the image border: only the part inside counts.
    shifted = [[x + 20.0, y] for x, y in TRI]  # x beyond 32 is cut
    frags = screen(shifted, [[0, 1, 2]])
    assert 0 < float(frags.coverage.sum()) < tri_area(TRI) - 10


def test_shared_edges_leave_no_seams():
    # A fan of 6 triangles around an interior vertex, all sub-pixel thin near the centre.
    c = [16.3, 15.8]
    ring = [[16.3 + 9 * math.cos(a), 15.8 - 9 * math.sin(a)] for a in torch.linspace(0, 2 * math.pi, 7)[:-1].tolist()]
    faces = [[0, 1 + i, 1 + (i + 1) % 6] for i in range(6)]
    frags = screen([c] + ring, faces)
    hexagon = sum(tri_area([c, ring[i], ring[(i + 1) % 6]]) for i in range(6))
    assert abs(float(frags.coverage.sum()) - hexagon) < 1e-9
    inner = frags.coverage[0, 12:20, 12:20]  # inside the hexagon: the six triangles' shares add up to 1
    torch.testing.assert_close(inner, torch.ones_like(inner))


def test_silhouette_gradient_matches_the_area_derivative_and_finite_differences():
    xy = torch.tensor([TRI], dtype=D, requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize_screen(xy, torch.ones(1, 3, dtype=D), faces, 32, 32)
    (grad,) = torch.autograd.grad(frags.coverage.sum(), xy)
    # Σ coverage is the area, so its gradient is the area formula's.
    p = torch.tensor(TRI, dtype=D, requires_grad=True)
    (expected,) = torch.autograd.grad(0.5 * ((p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1])
                                             - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])).abs(), p)
    torch.testing.assert_close(grad[0], expected)
    p = p.detach()
    # Finite differences: move vertex 2 outward (and along y).
    eps = 1e-5
    for axis in (0, 1):
        plus, minus = p.clone(), p.clone()
        plus[2, axis] += eps
        minus[2, axis] -= eps
        fd = (screen(plus, faces).coverage.sum() - screen(minus, faces).coverage.sum()) / (2 * eps)
        assert abs(float(fd) - float(grad[0, 2, axis])) < 1e-6


def test_colour_gradients_match_finite_differences_with_perspective():
    torch.manual_seed(0)
    xy = torch.tensor([[[4.2, 3.3], [6.1, 17.8], [15.4, 5.1], [14.9, 16.2]]], dtype=D)
    w = torch.tensor([[1.0, 1.7, 1.3, 2.1]], dtype=D)
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    colour = torch.rand(4, 3, dtype=D)
    bg = torch.rand(1, 20, 20, 3, dtype=D)
    weights = torch.rand(1, 20, 20, 3, dtype=D)

    def loss(xy, w):
        frags = rasterize_screen(xy, w, faces, 20, 20)
        img = frags.composite(frags.to_image(frags.interpolate(colour, faces)), bg)
        return (img * weights).sum() + frags.to_image(frags.depth[:, None]).sum()

    xy_, w_ = xy.clone().requires_grad_(True), w.clone().requires_grad_(True)
    g_xy, g_w = torch.autograd.grad(loss(xy_, w_), [xy_, w_])
    eps = 1e-6
    for v in range(4):
        for axis in range(2):
            plus, minus = xy.clone(), xy.clone()
            plus[0, v, axis] += eps
            minus[0, v, axis] -= eps
            fd = (loss(plus, w) - loss(minus, w)) / (2 * eps)
            assert abs(float(fd) - float(g_xy[0, v, axis])) < 1e-5 * (1 + abs(float(fd))), (v, axis)
        plus, minus = w.clone(), w.clone()
        plus[0, v] += eps
        minus[0, v] -= eps
        fd = (loss(xy, plus) - loss(xy, minus)) / (2 * eps)
        assert abs(float(fd) - float(g_w[0, v])) < 1e-5 * (1 + abs(float(fd)))


def camera(res, az=0.0, el=0.0, dist=2.0, fov=50.0):
    one = lambda v: torch.tensor([v], dtype=D)  # noqa: E731
    return make_cameras(one(az), one(el), one(dist), one(fov), res, CameraConfig())


def test_perspective_plane_depth_and_barycentrics_match_the_rays():
    # A square in the plane x = 0.3 facing the camera at +x: every pixel's interpolated world point is where its
    # ray meets the plane, and its depth is the view-space distance.
    verts = torch.tensor([[0.3, -0.5, -0.5], [0.3, 0.5, -0.5], [0.3, 0.5, 0.5], [0.3, -0.5, 0.5]], dtype=D)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cams = camera(24, fov=60.0)
    frags = rasterize(verts, faces, cams)
    o, d = rays(cams)
    o, d = o.reshape(-1, 3)[frags.pixel], d.reshape(-1, 3)[frags.pixel]
    inside = frags.coverage.reshape(-1)[frags.pixel] == 1.0
    t = (0.3 - o[:, 0]) / d[:, 0]
    hit = o + t[:, None] * d
    torch.testing.assert_close(frags.interpolate(verts, faces)[inside], hit[inside])
    torch.testing.assert_close(frags.depth[inside], (2.0 - 0.3) * torch.ones_like(t[inside]))
    # The square's projected side: 1 / 1.7 of the image height per tan(fov/2) unit.
    side = 24 * (1.0 / 1.7) / (2 * math.tan(math.radians(30)))
    assert abs(float(frags.coverage.sum()) - side**2) < 1e-6


def sphere(res=16, r=0.6):
    geo = DMTetGeometry(DMTetConfig(grid_resolution=res, grid=TINY_GRID))
    with torch.no_grad():
        geo.sdf.copy_(geo.vertex_positions().norm(dim=-1) - r)
    return geo


def test_sphere_mesh_silhouette_and_depth_match_the_analytic_sphere():
    geo, r = sphere(20), 0.6
    verts, faces = geo.surface()
    cams = make_cameras(torch.tensor([30.0, 200.0]), torch.tensor([20.0, -10.0]), torch.tensor([2.0, 2.0]),
                        torch.tensor([50.0, 50.0]), 48, CameraConfig())
    frags = rasterize(verts, faces, cams)
    o, d = rays(cams)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - r * r)
    disk = disc > 0
    mask = frags.coverage > 0.5
    assert float((mask & disk).sum() / (mask | disk).sum()) > 0.97
    t = -b - disc.clamp_min(0).sqrt()  # ray distance to the analytic sphere
    points = frags.interpolate(verts, faces)
    ray_dist = (points - cams.c2w[frags.pixel // 48**2, :3, 3]).norm(dim=-1)
    # Rays meeting the sphere at less than 60° from its normal (grazing ones magnify the facets' error).
    head_on = disc.clamp_min(0).sqrt() > 0.5 * r
    interior = (frags.coverage.reshape(-1)[frags.pixel] == 1) & head_on.reshape(-1)[frags.pixel]
    assert (ray_dist[interior] - t.reshape(-1)[frags.pixel][interior]).abs().max() < 0.02
    xy, w = project(verts, cams)
    assert xy.shape == (2, verts.shape[0], 2) and (w > 0).all()


def test_regularisers_on_known_meshes():
    cube_v = torch.tensor([[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)], dtype=D)
    cube_f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                           [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    # 18 edges: 12 cube edges at 90° (1 − cos = 1), 6 face diagonals flat (0); all faces have equal area.
    torch.testing.assert_close(normal_consistency_loss(cube_v, cube_f), torch.tensor(12 / 18, dtype=D))
    octa_v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=D)
    octa_f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    # Each vertex's four neighbours average to the origin: |L v|² = 1.
    torch.testing.assert_close(laplacian_loss(octa_v, octa_f), torch.tensor(1.0, dtype=D))
    flat = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 0]], dtype=D)
    fan = torch.tensor([[4, 0, 1], [4, 1, 2], [4, 2, 3], [4, 3, 0]])
    assert float(normal_consistency_loss(flat, fan)) == 0.0
    # The centre is the mean of its 4 neighbours (L = 0); each corner is off its 3 neighbours' mean by (½, ½).
    torch.testing.assert_close(laplacian_loss(flat, fan), torch.tensor(4 * 0.5 / 5, dtype=D))


def test_mesh_renderer_returns_the_volume_dict_and_trains_the_dmtet():
    geo = sphere(12)
    ren = MeshRenderer(geo, Background(BackgroundConfig(color=[0.0, 1.0, 0.0])), MeshRendererConfig())
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([15.0]), torch.tensor([2.0]), torch.tensor([50.0]), 24,
                        CameraConfig())
    out = ren(cams, shading="lambertian", train=True)
    for key in ("rgb", "opacity", "depth", "normal", "orient_loss", "sparsity_loss", "opacity_loss", "shading",
                "normal_consistency_loss", "laplacian_loss"):
        assert key in out
    assert out["rgb"].shape == (1, 24, 24, 3) and out["opacity"].shape == (1, 24, 24, 1)
    torch.testing.assert_close(out["rgb"][0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))  # background corner
    # The trainer's surface points (origin + dir · depth / opacity) land on the sphere.
    o, d = rays(cams)
    covered = out["opacity"][..., 0] > 0.99
    p = o + d * out["depth"] / out["opacity"].clamp_min(1e-6)
    assert (p[covered].norm(dim=-1) - 0.6).abs().max() < 0.03
    loss = (out["rgb"] * torch.rand_like(out["rgb"])).sum() + out["normal_consistency_loss"] + out["laplacian_loss"]
    loss.backward()
    assert geo.sdf.grad.abs().sum() > 0 and geo.deform.grad.abs().sum() > 0
    assert geo.mlp[-1].weight.grad.abs().sum() > 0 and geo.encoding.table.grad.abs().sum() > 0
    ren.update_occupancy(0)  # a no-op, as the trainer calls it for every renderer
    with torch.no_grad():
        geo.sdf.fill_(1.0)  # empty mesh -> background, zero regularisers
        empty = ren(cams, shading="albedo", train=False)
    assert (empty["opacity"] == 0).all() and float(empty["laplacian_loss"]) == 0.0


def test_nvdiffrast_backend_needs_cuda():
    verts = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="nvdiffrast"):
        rasterize(verts, torch.tensor([[0, 1, 2]]), camera(8), backend="nvdiffrast")
