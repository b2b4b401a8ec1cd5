"""Kuhn tet grid, marching tetrahedra (sphere area/volume, watertight, outward, gradients) and the NeRF → DMTet
hand-off (silhouette preserved, texture copied or distilled)."""

import itertools
import math
from collections import Counter

import pytest
import torch
import trimesh

from dreamgen import registry, schema
from dreamgen.cameras import CameraConfig, make_cameras
from dreamgen.errors import ConfigError
from dreamgen.export.mesh import ExportConfig, extract_mesh
from dreamgen.geometry.base import DensityField, SurfaceField
from dreamgen.geometry.dmtet import _TRI_COUNT, DMTetConfig, DMTetGeometry
from dreamgen.geometry.hashgrid import HashGridConfig
from dreamgen.geometry.nerf import HashGridNeRF, NeRFConfig
from dreamgen.geometry.tets import kuhn_grid, tet_volumes, to_bbox, unique_edges
from dreamgen.render.background import Background, BackgroundConfig
from dreamgen.render.bake import bake_texture, rendered_albedo
from dreamgen.render.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamgen.render.volume import RendererConfig, VolumeRenderer

TINY_GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_kuhn_grid_tiles_the_cube_conformingly():
    n = 3
    grid = kuhn_grid(n)
    assert grid.verts.shape == ((n + 1) ** 3, 3) and grid.tets.shape == (6 * n**3, 4)
    vol = tet_volumes(grid.verts, grid.tets)
    assert (vol > 0).all()  # every tet positively oriented
    torch.testing.assert_close(vol.sum(), torch.tensor(8.0))  # and together they fill [-1,1]^3
    # Conforming: every triangle is shared by two tets, except the 2 per boundary square (12·n² of them).
    tris = Counter(tuple(sorted(t[list(f)].tolist())) for t in grid.tets for f in ((0, 1, 2), (0, 1, 3), (0, 2, 3),
                                                                                   (1, 2, 3)))
    assert set(tris.values()) == {1, 2} and sum(c == 1 for c in tris.values()) == 12 * n * n
    edges, tet_edges = unique_edges(grid.tets)
    # Euler characteristic of a ball: V − E + F − T = 1.
    assert grid.verts.shape[0] - edges.shape[0] + len(tris) - grid.tets.shape[0] == 1
    assert (edges[:, 0] < edges[:, 1]).all()
    e = edges[tet_edges[5]]  # tet 5's edge (2,3)
    assert set(e[5].tolist()) == {int(grid.tets[5, 2]), int(grid.tets[5, 3])}
    bbox = torch.tensor([[-0.5, 0.0, 1.0], [0.5, 2.0, 1.5]])
    world = to_bbox(grid.verts, bbox)
    torch.testing.assert_close(world.amin(0), bbox[0]) and torch.testing.assert_close(world.amax(0), bbox[1])


def test_triangle_table_counts():
    # Cases with one or three inside vertices cut a triangle, two inside vertices a quad (two triangles).
    expected = [0] + [2 if bin(c).count("1") == 2 else 1 for c in range(1, 15)] + [0]
    assert _TRI_COUNT.tolist() == expected


def sphere_geometry(res: int, r: float, centre=(0.0, 0.0, 0.0), **kw) -> DMTetGeometry:
    geo = DMTetGeometry(DMTetConfig(grid_resolution=res, grid=TINY_GRID, **kw)).double()
    with torch.no_grad():
        geo.sdf.copy_((geo.vertex_positions() - torch.tensor(centre, dtype=torch.float64)).norm(dim=-1) - r)
    return geo


def test_marching_tets_sphere_is_a_closed_outward_mesh_with_the_right_area_and_volume():
    r = 0.6
    geo = sphere_geometry(24, r, centre=(0.05, -0.03, 0.02))
    verts, faces = geo.surface()
    mesh = trimesh.Trimesh(verts.detach().numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert abs(mesh.area / (4 * math.pi * r**2) - 1) < 0.02
    assert abs(mesh.volume / (4 / 3 * math.pi * r**3) - 1) < 0.02  # positive volume: normals point outward
    # Every face's normal points away from the centre, and every vertex lies on the sphere to within a cell.
    centroid_dir = mesh.triangles_center - [0.05, -0.03, 0.02]
    assert ((mesh.face_normals * centroid_dir).sum(-1) > 0).all()
    dist = (verts.detach() - torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64)).norm(dim=-1)
    assert (dist - r).abs().max() < 2.0 / 24


def test_marching_tets_vertices_match_finite_differences_in_sdf_and_deformation():
    geo = sphere_geometry(6, 0.55)
    torch.manual_seed(0)
    with torch.no_grad():
        geo.deform.normal_()
    weights = None

    def objective() -> torch.Tensor:
        nonlocal weights
        verts, _ = geo.surface()
        if weights is None:
            weights = torch.randn(verts.shape, dtype=torch.float64)
        return (verts * weights).sum()

    loss = objective()
    g_sdf, g_def = torch.autograd.grad(loss, [geo.sdf, geo.deform])
    eps = 1e-6
    crossed = (g_sdf != 0).nonzero().squeeze(-1)
    assert len(crossed) > 20
    with torch.no_grad():
        for i in crossed[:6].tolist():
            for param, grad, idx in ((geo.sdf, g_sdf, (i,)), (geo.deform, g_def, (i, 1))):
                param[idx] += eps
                up = objective()
                param[idx] -= 2 * eps
                down = objective()
                param[idx] += eps
                assert abs(float((up - down) / (2 * eps)) - float(grad[idx])) < 1e-6 * (1 + abs(float(grad[idx])))


def test_deformation_bound_keeps_every_tet_positive():
    # Volume is affine in each vertex: its minimum over per-axis offsets |δ| ≤ s sits at one of the 2^12 corners.
    ref = kuhn_grid(1).verts[kuhn_grid(1).tets[0]].double()  # one Kuhn tet (all six are congruent)
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=12)), dtype=torch.float64).reshape(-1, 4, 3)

    def worst(s: float) -> float:
        return float(tet_volumes((ref + 2 * s * corners).reshape(-1, 3),
                                 torch.arange(4 * len(corners)).reshape(-1, 4)).min())

    assert worst(0.16) > 0 > worst(0.17)  # the bound is 1/6 of a cell (cells are 2 units wide here)
    geo = DMTetGeometry(DMTetConfig(grid_resolution=4, grid=TINY_GRID))
    assert geo.cfg.deformation_scale < 1 / 6
    with torch.no_grad():
        geo.deform.copy_(torch.sign(torch.randn_like(geo.deform)) * 50.0)  # tanh saturated: every offset maximal
    assert (tet_volumes(geo.vertex_positions(), geo.tets) > 0).all()
    with pytest.raises(ConfigError, match=r"geometry.deformation_scale=0.2: must be in \[0, 0.166667\)"):
        schema.check(DMTetConfig(deformation_scale=0.2), "geometry")


def test_mesh_textureless_in_the_mean_albedo_gives_the_paint_no_gradient():
    geo = sphere_geometry(8, 0.5).float()
    cams = make_cameras(torch.tensor([30.0]), torch.tensor([15.0]), torch.tensor([2.0]), torch.tensor([40.0]), 16,
                        CameraConfig())
    bg = Background(BackgroundConfig(color=[0.0, 0.0, 0.0]))
    white = MeshRenderer(geo, bg, MeshRendererConfig())(cams, shading="textureless", train=False)["rgb"]
    out = MeshRenderer(geo, bg, MeshRendererConfig(textureless_albedo="mean"))(cams, shading="textureless",
                                                                              train=False)["rgb"]
    inside = white.sum(-1) > 0
    ratio = out[inside] / white[inside]  # [P,3]: one tint for the whole image
    assert ratio.std(0).max() < 1e-5 and (ratio[0] - 1.0).abs().max() > 1e-3
    out.sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in geo.mlp.parameters())
    assert geo.sdf.grad.abs().max() > 0


def test_a_frozen_surface_is_meshed_once_until_it_changes():
    geo = sphere_geometry(8, 0.5)
    live = geo.surface()
    assert live[0].requires_grad and geo.surface()[0] is not live[0]  # trained: meshed every call, on the graph
    geo.sdf.requires_grad_(False)
    geo.deform.requires_grad_(False)
    frozen = geo.surface()
    assert geo.surface()[0] is frozen[0] and not frozen[0].requires_grad
    torch.testing.assert_close(frozen[0], live[0].detach())
    with torch.no_grad():
        geo.sdf.sub_(0.1)  # a larger sphere: meshed again
    assert geo.surface()[0].norm(dim=-1).mean() > frozen[0].norm(dim=-1).mean() + 0.05


def test_mesh_export_and_registration():
    geo = sphere_geometry(8, 0.5).float()
    assert isinstance(geo, SurfaceField) and not isinstance(geo, DensityField)
    mesh = extract_mesh(geo, ExportConfig(largest_component=False, max_faces=0))
    assert mesh.is_watertight and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert registry.lookup("geometry", "dmtet").cls is DMTetGeometry
    groups = {g["name"]: g for g in geo.param_groups(0.01, 0.001)}
    assert groups["geometry.net"]["lr"] == 0.001 and geo.sdf in groups["geometry.sdf"]["params"]
    with torch.no_grad():
        geo.sdf.fill_(1.0)
    verts, faces = geo.surface()
    assert faces.shape == (0, 3) and verts.requires_grad


# ---- hand-off ----------------------------------------------------------------------------------------------------
BOX_CENTRE, BOX_HALF = torch.tensor([0.1, 0.0, 0.05]), torch.tensor([0.45, 0.3, 0.25])


def box_target(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inside = ((p - BOX_CENTRE).abs() < BOX_HALF).all(-1)
    colour = torch.stack([0.5 + 0.4 * torch.tanh(3 * p[:, 0]), 0.3 + 0 * p[:, 1], 0.6 + 0.3 * torch.tanh(3 * p[:, 2])],
                         -1)
    return 30.0 * inside.float(), colour


@pytest.fixture(scope="module")
def box_nerf() -> HashGridNeRF:
    """A coarse NeRF fitted for 150 steps (~1.5 s) to an off-centre box of density 30 with an albedo gradient."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nerf = HashGridNeRF(NeRFConfig(grid=TINY_GRID, density_blob="none"))
    opt = torch.optim.Adam(nerf.parameters(), lr=0.02)
    for _ in range(150):
        p = torch.rand(4096, 3) * 2 - 1
        sigma, colour = box_target(p)
        out = nerf(p)
        loss = (out["density"] - sigma).square().mean() / 100 + (out["albedo"] - colour).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return nerf.requires_grad_(False)


def test_handoff_preserves_the_coarse_silhouette_and_copies_the_texture(box_nerf):
    geo = DMTetGeometry.from_nerf(box_nerf, DMTetConfig(grid=TINY_GRID, grid_resolution=32))
    # A tight box around the coarse surface, with margin.
    lo, hi = BOX_CENTRE - BOX_HALF, BOX_CENTRE + BOX_HALF
    assert (geo.bbox[0] < lo).all() and (geo.bbox[1] > hi).all()
    assert ((geo.bbox[1] - geo.bbox[0]) < 1.6 * (hi - lo)).all()
    assert 0 < geo.handoff_threshold < 30

    bg = Background(BackgroundConfig(color=[0.0, 0.0, 0.0]))
    cams = make_cameras(torch.tensor([0.0, 100.0, 210.0]), torch.tensor([10.0, 30.0, -5.0]),
                        torch.tensor([1.8] * 3), torch.tensor([50.0] * 3), 48, CameraConfig())
    with torch.no_grad():
        coarse = VolumeRenderer(box_nerf, bg, RendererConfig(num_samples=96))(cams, shading="albedo", train=False)
        fine = MeshRenderer(geo, bg, MeshRendererConfig())(cams, shading="albedo", train=False)
    a, b = coarse["opacity"][..., 0] > 0.5, fine["opacity"][..., 0] > 0.5
    iou = (a & b).sum((1, 2)) / (a | b).sum((1, 2))
    assert (iou >= 0.8).all(), iou
    # Same albedo field: the copied texture reproduces the coarse colours where both see the object.
    both = a & b
    assert (coarse["rgb"] - fine["rgb"]).abs()[both].mean() < 0.05
    p = geo.surface_samples(500)
    torch.testing.assert_close(geo.albedo(p), box_nerf.albedo(p))


def test_handoff_distils_the_texture_when_the_architectures_differ(box_nerf):
    cfg = DMTetConfig(grid=TINY_GRID, mlp_width=16, grid_resolution=16, distill_steps=100, distill_points=1024)
    geo = DMTetGeometry.from_nerf(box_nerf, cfg)
    p = geo.surface_samples(1000)
    fresh = DMTetGeometry(cfg)
    err = (geo.albedo(p) - box_nerf.albedo(p)).abs().mean()
    assert err < 0.06 and err < 0.5 * (fresh.albedo(p) - box_nerf.albedo(p)).abs().mean()
    with pytest.raises(ConfigError, match="copy"):
        DMTetGeometry.from_nerf(box_nerf, DMTetConfig(grid=TINY_GRID, mlp_width=16, texture_init="copy"))


def test_bake_fits_the_surface_texture_to_the_nerfs_renders_whatever_the_backgrounds(box_nerf):
    """A surface handed off with an untrained texture, baked from the NeRF's renders over a white background into
    its own over a black one: from cameras the bake never saw, its albedo matches the NeRF's rendered albedo."""
    torch.manual_seed(0)
    geo = DMTetGeometry.from_nerf(box_nerf, DMTetConfig(grid=TINY_GRID, grid_resolution=24, texture_init="distill",
                                                        distill_steps=0))
    surface = geo.sdf.detach().clone()
    source = VolumeRenderer(box_nerf, Background(BackgroundConfig(color=[1.0, 1.0, 1.0])),
                            RendererConfig(num_samples=64))
    target = MeshRenderer(geo, Background(BackgroundConfig(color=[0.0, 0.0, 0.0])), MeshRendererConfig())
    full = lambda n, v: torch.full((n,), v)  # noqa: E731
    views = [make_cameras(torch.arange(4.0) * 90 + 45 * k, full(4, 25.0 - 30 * k), full(4, 1.8), full(4, 50.0), 24,
                          CameraConfig()) for k in range(2)]
    held_out = make_cameras(torch.tensor([20.0, 150.0, 260.0]), torch.tensor([5.0, 15.0, -10.0]), full(3, 1.8),
                            full(3, 50.0), 24, CameraConfig())

    def error() -> float:
        with torch.no_grad():
            (want, seen), (got, shown) = rendered_albedo(source, held_out), rendered_albedo(target, held_out)
        return float((want - got)[seen & shown].abs().mean())

    with torch.no_grad():  # the background taken out: the same albedo over black as over white
        black = VolumeRenderer(box_nerf, target.background, RendererConfig(num_samples=64))
        (on_white, mask), (on_black, _) = rendered_albedo(source, held_out), rendered_albedo(black, held_out)
        raw = (source(held_out, shading="albedo", train=False)["rgb"]
               - black(held_out, shading="albedo", train=False)["rgb"])
    torch.testing.assert_close(on_white[mask], on_black[mask], atol=1e-5, rtol=0)
    assert raw[mask].abs().max() > 0.1  # half-covered pixels at the edges, where it shows
    before = error()
    losses = bake_texture(source, target, views, steps=40, lr=0.03)
    assert losses[-1] < 0.2 * losses[0]
    assert error() < 0.05 and error() < 0.3 * before, (before, error())
    assert torch.equal(geo.sdf, surface) and all(p.grad is None for p in geo.parameters())
