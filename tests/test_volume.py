"""Volume renderer against analytic transmittance/depth, gradients vs finite differences, CPU-only nerfacc use."""

import math
import sys
import types

import pytest
import torch
from torch import nn

import nerfacc
from dreamgen.cameras import CameraConfig, make_cameras
from dreamgen.geometry.hashgrid import HashGridConfig
from dreamgen.geometry.nerf import HashGridNeRF, NeRFConfig
from dreamgen.render.background import Background, BackgroundConfig
from dreamgen.render.volume import RendererConfig, VolumeRenderer, ray_sphere_bounds

TINY_GRID = HashGridConfig(n_levels=3, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)


class ConstantBall(nn.Module):
    """σ inside |x| < ball (0 outside, or only in the shell [ball - shell, ball] when shell > 0), constant albedo."""

    def __init__(self, sigma: float, ball: float, radius: float = 1.0, shell: float = 0.0):
        super().__init__()
        self.sigma, self.ball, self.radius, self.shell = sigma, ball, radius, shell
        self.register_buffer("rgb", torch.tensor([0.2, 0.4, 0.6]))

    def density(self, points):
        r = points.norm(dim=-1)
        inside = (r < self.ball) & (r >= self.ball - self.shell if self.shell else True)
        return torch.where(inside, torch.full_like(r, self.sigma), torch.zeros_like(r))

    def forward(self, points, with_normal=False):
        out = {"density": self.density(points), "albedo": self.rgb.to(points).expand(points.shape[0], 3)}
        if with_normal:
            out["normal"] = torch.nn.functional.normalize(points, dim=-1)
        return out


def cameras(res: int, distance: float = 2.0, azimuth: float = 0.0, elevation: float = 0.0, fov: float = 40.0,
            dtype=torch.float32):
    one = lambda v: torch.tensor([v], dtype=dtype)  # noqa: E731
    return make_cameras(one(azimuth), one(elevation), one(distance), one(fov), res, CameraConfig())


def renderer(geometry, bg=(1.0, 1.0, 1.0), **kw) -> VolumeRenderer:
    return VolumeRenderer(geometry, Background(BackgroundConfig(color=list(bg))), RendererConfig(**kw))


def test_ray_sphere_bounds():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_sphere_bounds(o, d, 1.0)
    assert hit.tolist() == [True, False, True]
    torch.testing.assert_close(near, torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(far, torch.tensor([4.0, 0.0, 1.0]))


def test_constant_ball_matches_analytic_transmittance_colour_and_depth():
    sigma, res = 1.5, 9
    geo = ConstantBall(sigma, ball=1.0)  # density fills the sampling sphere: the quadrature is exact
    ren = renderer(geo, bg=(0.0, 1.0, 0.0), num_samples=512)
    cams = cameras(res)
    out = ren(cams, shading="albedo", train=False)
    from dreamgen.cameras import rays
    o, d = rays(cams)
    near, far, hit = ray_sphere_bounds(o.reshape(-1, 3), d.reshape(-1, 3), 1.0)
    L = far - near
    opacity = 1 - torch.exp(-sigma * L)
    torch.testing.assert_close(out["opacity"].reshape(-1), opacity, atol=1e-5, rtol=0)
    expected_rgb = opacity[:, None] * geo.rgb + (1 - opacity[:, None]) * torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(out["rgb"].reshape(-1, 3), expected_rgb, atol=1e-5, rtol=0)
    # E[t] = ∫ σ e^{-σs} (near + s) ds over [0, L] (unnormalised by opacity).
    depth = near * opacity + (1 - torch.exp(-sigma * L)) / sigma - L * torch.exp(-sigma * L)
    torch.testing.assert_close(out["depth"].reshape(-1), depth, atol=2e-3, rtol=0)
    assert hit.all()
    # Centre pixel: the chord is the diameter.
    c = res // 2
    assert abs(float(out["opacity"][0, c, c, 0]) - (1 - math.exp(-2 * sigma))) < 1e-5


def test_depth_of_a_thin_opaque_shell():
    geo = ConstantBall(sigma=1e4, ball=0.5, shell=0.02)
    out = renderer(geo, num_samples=256)(cameras(5, distance=2.0), shading="albedo", train=False)
    c = 2
    assert float(out["opacity"][0, c, c, 0]) > 0.999
    assert abs(float(out["depth"][0, c, c, 0]) - 1.5) < 0.02  # camera at 2, shell surface at radius 0.5
    assert float(out["opacity"][0, 0, 0, 0]) < 1e-6  # corner rays (fov 40°) miss the ball


def test_composited_normal_of_a_blob_faces_the_camera():
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    torch.nn.init.zeros_(geo.mlp[-1].weight)
    torch.nn.init.zeros_(geo.mlp[-1].bias)
    cams = cameras(5, azimuth=30.0, elevation=20.0)
    out = renderer(geo)(cams, shading="normal", train=False)
    n = torch.nn.functional.normalize(out["normal"][0, 2, 2], dim=-1)
    to_cam = torch.nn.functional.normalize(cams.c2w[0, :3, 3], dim=-1)
    assert float((n * to_cam).sum().detach()) > 0.99
    assert out["rgb"].shape == (1, 5, 5, 3) and out["shading"] == "normal"


def test_orientation_loss_penalises_normals_facing_away():
    class Inverted(ConstantBall):
        def forward(self, points, with_normal=False):
            out = super().forward(points, with_normal)
            if with_normal:
                out["normal"] = -out["normal"]
            return out

    def orient(geo):
        return float(renderer(geo, num_samples=128)(cameras(5), "lambertian", train=False)["orient_loss"])

    # Opaque ball: only the front is seen; outward normals there face the camera, inverted ones face away.
    assert orient(ConstantBall(1e3, ball=0.8)) < 1e-6
    assert orient(Inverted(1e3, ball=0.8)) > 0.1
    # A translucent ball shows its back, whose outward normals face away: penalised too.
    assert orient(ConstantBall(2.0, ball=0.8)) > 0.01


@pytest.mark.parametrize("shading", ["albedo", "lambertian"])
def test_rgb_gradient_wrt_a_table_entry_matches_finite_differences(shading):
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID, mlp_width=8)).double()
    with torch.no_grad():
        geo.encoding.table.normal_(0, 0.5)
    ren = renderer(geo, bg=(0.3, 0.3, 0.3), num_samples=16).double()
    cams = cameras(4, azimuth=20.0, elevation=10.0, dtype=torch.float64)
    w = torch.randn(1, 4, 4, 3, dtype=torch.float64)

    def loss():
        return (ren(cams, shading=shading, train=False)["rgb"] * w).sum()

    loss().backward()
    grad = geo.encoding.table.grad
    row, col = divmod(int(grad.abs().argmax()), grad.shape[1])
    eps = 1e-6
    with torch.no_grad():
        table = geo.encoding.table
        table[row, col] += eps
        up = loss()
        table[row, col] -= 2 * eps
        down = loss()
        table[row, col] += eps
    fd = float((up - down) / (2 * eps))
    assert abs(fd - float(grad[row, col])) < 1e-6 * max(1.0, abs(fd))
    assert abs(fd) > 1e-4


def test_no_cuda_only_nerfacc_call_on_cpu(monkeypatch):
    def forbidden(*_a, **_k):
        raise AssertionError("CUDA-only nerfacc function called on CPU")

    # Every nerfacc CUDA kernel goes through nerfacc.cuda._backend._C (built on first use).
    fake_backend = types.ModuleType("nerfacc.cuda._backend")

    class Forbid:
        def __getattr__(self, name):
            forbidden()

    fake_backend._C = Forbid()
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", fake_backend)
    monkeypatch.setattr(nerfacc.OccGridEstimator, "sampling", forbidden)
    monkeypatch.setattr(nerfacc.OccGridEstimator, "update_every_n_steps", forbidden)
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    ren = renderer(geo, occupancy_grid=True, num_samples=16)
    ren.update_occupancy(0)
    out = ren(cameras(4), shading="random", train=True)
    (out["rgb"].mean() + out["orient_loss"]).backward()


def test_empty_space_grid_skips_samples_without_changing_the_image():
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    calls = []
    orig = geo.forward
    geo.forward = lambda p, with_normal=False: (calls.append(p.shape[0]), orig(p, with_normal))[1]
    cams = cameras(16, distance=1.8, fov=60.0)
    full = renderer(geo, num_samples=48)(cams, shading="lambertian", train=False)
    pruned_ren = renderer(geo, num_samples=48, occupancy_grid=True, occupancy_resolution=32)
    pruned_ren.update_occupancy(0)
    assert 0.05 < pruned_ren.empty_space.occupied_cells.float().mean() < 0.5
    calls.clear()
    pruned = pruned_ren(cams, shading="lambertian", train=False)
    assert calls[0] < 0.6 * 16 * 16 * 48  # far fewer samples reach the field
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(pruned[key], full[key], atol=5e-3, rtol=0)


def test_torch_backend_builds_no_nerfacc_estimator_and_skips_the_same_samples():
    """occupancy_backend: torch is the CPU's grid on every device: no nerfacc estimator (nothing to JIT-build on a
    GPU); on the CPU it renders exactly what auto renders."""
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    cams = cameras(8, distance=1.8, fov=60.0)
    images = {}
    for backend in ("auto", "torch"):
        ren = renderer(geo, num_samples=32, occupancy_grid=True, occupancy_backend=backend)
        assert (ren.estimator is None) == (backend == "torch")
        torch.manual_seed(1)
        ren.update_occupancy(0)
        images[backend] = ren(cams, shading="lambertian", train=False)["rgb"]
    torch.testing.assert_close(images["torch"], images["auto"], atol=0, rtol=0)


def test_chunking_does_not_change_the_render():
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    cams = cameras(6)
    a = renderer(geo, num_samples=16)(cams, shading="lambertian", train=False)
    b = renderer(geo, num_samples=16, chunk=7)(cams, shading="lambertian", train=False)
    for key in ("rgb", "opacity", "depth", "normal", "orient_loss", "sparsity_loss", "opacity_loss"):
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("shading", ["albedo", "lambertian"])  # lambertian: analytic normals (double backward)
def test_checkpointed_chunks_give_the_same_training_render_and_gradients(shading):
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    grads = []
    for ckpt in (False, True):
        geo.zero_grad()
        torch.manual_seed(1)  # the same stratified jitter
        out = renderer(geo, num_samples=16, chunk=9, checkpoint_rays=16 if ckpt else 0)(cameras(5), shading=shading,
                                                                                       train=True)
        (out["rgb"].square().sum() + out["orient_loss"]).backward()
        grads.append((out["rgb"].detach(), [p.grad.clone() for p in geo.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_training_render_draws_shading_modes_and_is_differentiable():
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    ren = renderer(geo, num_samples=16, albedo_only_prob=0.5, textureless_prob=0.5)
    modes = {ren(cameras(2), shading="random", train=True)["shading"] for _ in range(20)}
    assert modes == {"albedo", "textureless"}
    with pytest.raises(ValueError, match="shading"):
        ren(cameras(2), shading="phong")



def test_shading_probabilities_follow_their_schedule_over_the_run():
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID))
    ren = renderer(geo, num_samples=8, albedo_only_prob=0.0, textureless_prob=[10, 1.0, 0.0, 10])  # a shape phase
    assert {ren(cameras(2), train=True, step=s)["shading"] for s in range(10)} == {"textureless"}
    assert {ren(cameras(2), train=True, step=s)["shading"] for s in (10, 11, 500)} == {"lambertian"}


def test_textureless_in_the_mean_albedo_tints_the_white_render_and_leaves_the_paint_without_gradient():
    torch.manual_seed(0)
    geo = HashGridNeRF(NeRFConfig(grid=TINY_GRID, mlp_width=8)).double()
    with torch.no_grad():
        geo.encoding.table.normal_(0, 0.5)
    cams = cameras(6, azimuth=20.0, elevation=10.0, dtype=torch.float64)
    white = renderer(geo, bg=(0.0, 0.0, 0.0), num_samples=16).double()(cams, shading="textureless", train=False)
    albedo = renderer(geo, bg=(0.0, 0.0, 0.0), num_samples=16).double()(cams, shading="albedo", train=False)
    mean = renderer(geo, bg=(0.0, 0.0, 0.0), num_samples=16, textureless_albedo="mean").double()
    out = mean(cams, shading="textureless", train=False)
    tint = albedo["rgb"].sum((1, 2)) / albedo["opacity"].sum((1, 2))  # [1,3] the opacity-weighted mean albedo
    assert tint.std() > 0.01  # the field is not grey, so the tint is a real colour
    torch.testing.assert_close(out["rgb"], white["rgb"] * tint[:, None, None, :])
    # The shape is judged, the paint is not: the albedo rows of the last layer get no gradient, the density row does.
    out["rgb"].sum().backward()
    last = geo.mlp[-1].weight.grad  # [4, width]: density, then the albedo logits
    assert last[1:].abs().max() == 0 and last[0].abs().max() > 1e-6
    # A field of one colour renders as with Lambertian shading.
    ball = ConstantBall(5.0, ball=0.7)
    lit = renderer(ball, num_samples=32, textureless_albedo="mean")
    torch.testing.assert_close(lit(cameras(8), shading="textureless", train=False)["rgb"],
                               lit(cameras(8), shading="lambertian", train=False)["rgb"])


@pytest.mark.parametrize("kind", ["solid", "mlp"])
def test_background_shapes_and_random_colour(kind):
    dirs = torch.nn.functional.normalize(torch.randn(2, 3, 5, 3), dim=-1)
    bg = Background(BackgroundConfig(kind=kind, color=[0.1, 0.2, 0.3]))
    rgb = bg(dirs)
    assert rgb.shape == (2, 3, 5, 3) and (rgb >= 0).all() and (rgb <= 1).all()
    if kind == "solid":
        torch.testing.assert_close(rgb, torch.tensor([0.1, 0.2, 0.3]).expand(2, 3, 5, 3))
    else:
        assert rgb.std(dim=(1, 2)).min() > 0  # varies with direction
        assert sum(p.numel() for p in bg.parameters()) > 0
    rnd = Background(BackgroundConfig(kind=kind, random_color_prob=1.0))
    out = rnd(dirs, train=True)
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))  # one solid colour per image
    assert not torch.allclose(out[0], out[1])
    still = rnd(dirs, train=False)  # no random colours outside training
    if kind == "solid":
        torch.testing.assert_close(still, torch.ones_like(still))
    else:
        assert still.std(dim=(1, 2)).min() > 0
