"""Hash-grid NeRF: bounds, density blob, normals (finite differences and autograd), parameter groups."""

import pytest
import torch

from dreamgen.geometry.hashgrid import HashGridConfig
from dreamgen.geometry.nerf import HashGridNeRF, NeRFConfig, trunc_exp

TINY_GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=2.0)


def make_nerf(zero_head: bool = False, **kw) -> HashGridNeRF:
    torch.manual_seed(0)
    nerf = HashGridNeRF(NeRFConfig(grid=TINY_GRID, **kw)).double()
    if zero_head:  # the field is the blob alone: radially symmetric density, albedo 0.5
        torch.nn.init.zeros_(nerf.mlp[-1].weight)
        torch.nn.init.zeros_(nerf.mlp[-1].bias)
    return nerf


def test_forward_shapes_ranges_and_zero_density_outside_the_box():
    nerf = make_nerf(radius=0.8)
    pts = torch.rand(100, 3, dtype=torch.float64) * 2 - 1  # some outside [-0.8, 0.8]^3
    out = nerf(pts)
    assert out["density"].shape == (100,) and out["albedo"].shape == (100, 3)
    assert (out["albedo"] >= 0).all() and (out["albedo"] <= 1).all() and (out["density"] >= 0).all()
    outside = (pts.abs() > 0.8).any(-1)
    assert outside.any() and (out["density"][outside] == 0).all() and (out["density"][~outside] > 0).all()
    torch.testing.assert_close(nerf.density(pts), out["density"])
    torch.testing.assert_close(nerf.albedo(pts), out["albedo"])
    torch.testing.assert_close(nerf.bbox, torch.tensor([[-0.8] * 3, [0.8] * 3]))


@pytest.mark.parametrize("blob", ["magic3d", "gaussian"])
def test_blob_makes_the_centre_denser(blob):
    nerf = make_nerf(zero_head=True, density_blob=blob)
    r = torch.linspace(0, 0.95, 20, dtype=torch.float64)
    sigma = nerf.density(torch.stack([r, 0 * r, 0 * r], -1))
    assert (sigma.diff() < 0).all()  # strictly decreasing away from the centre
    # magic3d at the origin: softplus(10); gaussian: softplus(10) too (exp(0) = 1).
    torch.testing.assert_close(sigma[0], torch.nn.functional.softplus(torch.tensor(10.0, dtype=torch.float64)))
    assert float(make_nerf(zero_head=True, density_blob="none").density(torch.zeros(1, 3).double()).detach()) < 1.0


@pytest.mark.parametrize("mode", ["finite_difference", "analytic"])
def test_normals_of_the_blob_point_outward(mode):
    nerf = make_nerf(zero_head=True, normals=mode)
    pts = torch.randn(64, 3, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True) * (0.2 + 0.6 * torch.rand(64, 1, dtype=torch.float64))
    n = nerf.normal(pts)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(64, dtype=torch.float64))
    cos = (n * pts / pts.norm(dim=-1, keepdim=True)).sum(-1)
    assert cos.min() > 0.9999


def test_analytic_normal_is_minus_the_density_gradient_and_trains_the_table():
    nerf = make_nerf(normals="analytic")
    pts = (torch.rand(32, 3, dtype=torch.float64) - 0.5)
    p = pts.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nerf.density(p).sum(), p)
    out = nerf(pts, with_normal=True)
    torch.testing.assert_close(out["normal"], -grad / grad.norm(dim=-1, keepdim=True))
    # Double backward: a loss on the normals reaches the hash table (orientation loss needs it).
    out["normal"][:, 0].sum().backward()
    assert nerf.encoding.table.grad.abs().sum() > 0
    # Under no_grad (eval renders) no graph is kept.
    with torch.no_grad():
        assert not nerf(pts, with_normal=True)["normal"].requires_grad


def test_finite_difference_normal_matches_analytic_on_a_smooth_field():
    fd = make_nerf(zero_head=True, density_blob="gaussian", fd_eps=1e-4)
    an = make_nerf(zero_head=True, density_blob="gaussian", normals="analytic")
    pts = torch.rand(16, 3, dtype=torch.float64) - 0.5
    torch.testing.assert_close(fd.normal(pts), an.normal(pts), atol=1e-6, rtol=0)


def test_trunc_exp_clamps_its_gradient():
    x = torch.tensor([1.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, x.detach().exp())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 15.0], dtype=torch.float64).exp())
    nerf = make_nerf(density_activation="trunc_exp")
    assert (nerf.density(torch.zeros(1, 3, dtype=torch.float64)) > 1e3).all()  # exp(10 + small)


def test_param_groups_cover_every_parameter_once():
    nerf = make_nerf()
    groups = nerf.param_groups(1e-2, 1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in nerf.parameters()) and len(set(ids)) == len(ids)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    assert [g["lr"] for g in nerf.param_groups(5e-3)] == [5e-3, 5e-3]
    torch.optim.Adam(groups)  # accepted as is


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="normals"):
        HashGridNeRF(NeRFConfig(grid=TINY_GRID, normals="sobel"))
    with pytest.raises(ValueError, match="density_blob"):
        HashGridNeRF(NeRFConfig(grid=TINY_GRID, density_blob="cube"))
