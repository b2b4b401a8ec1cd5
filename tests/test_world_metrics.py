import pytest
import torch

from dreamgen.cameras import CameraConfig, CameraSampler
from dreamgen.world import (FRONT_FEATURE_SHAPES, SHAPES, Alignment, evaluate, foreground_colour_error,
                            front_feature_score, janus_score, occupancy, render, silhouette_iou, transform_cameras,
                            volumetric_iou)
from dreamgen.world.metrics import align_by_occupancy, align_by_silhouette, true_paint_on_result
from dreamgen.world.objects import PAINTED_FRONT_SHAPES, SPHERE_RADIUS, nearest_surface_point, sdf

pytestmark = pytest.mark.usefixtures("one_thread")  # small renders: a thread pool only adds overhead


def gt_result(shape, colour="red", scale=1.0, offset=(0.0, 0.0, 0.0), variant="true", gain=1.0):
    """A 'text-to-3D result' that is the object (or a variant of it) mapped by p -> scale·p + offset
    (render_fn, occ_fn)."""
    c = torch.tensor(offset)

    def render_fn(cams):
        rgb, mask, _ = render(shape, colour, transform_cameras(cams, 1 / scale, -c / scale), variant=variant)
        return rgb * gain, mask.float()

    return render_fn, (lambda p: occupancy(shape, (p - c) / scale, variant))


def test_silhouette_iou_and_colour_error_values():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :, :2], b[0, :, 1:3] = True, True
    assert silhouette_iou(a, b) == pytest.approx(1 / 3)
    assert silhouette_iou(a, a) == 1.0
    rgb_a, rgb_b = torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3)
    rgb_a[a], rgb_b[b] = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.3, 0.4, 0.3])
    assert foreground_colour_error(rgb_a, a, rgb_b, b) == pytest.approx((0.1 + 0.0 + 0.3) / 3)
    assert foreground_colour_error(rgb_a, torch.zeros_like(a), rgb_b, b) == 1.0


def test_volumetric_iou_analytic():
    # A sphere of radius 0.3 against the GT sphere (0.45), no alignment: IoU = (0.3 / 0.45)³.
    iou = volumetric_iou(lambda p: p.norm(dim=-1) < 0.3, "sphere", Alignment(), resolution=40)
    assert iou == pytest.approx((0.3 / SPHERE_RADIUS) ** 3, abs=0.02)
    # Moment alignment undoes the scale.
    assert volumetric_iou(lambda p: p.norm(dim=-1) < 0.3, "sphere") > 0.97


@pytest.mark.parametrize("shape", ["cube", "house"])
def test_alignment_recovers_scale_and_offset(shape):
    render_fn, occ_fn = gt_result(shape, scale=1.2, offset=(0.06, -0.04, 0.03))
    cams = CameraSampler(CameraConfig()).orbit(4, 48)
    for a in (align_by_occupancy(occ_fn, shape), align_by_silhouette(render_fn, shape, cams)):
        assert a.scale == pytest.approx(1.2, rel=0.03)
        torch.testing.assert_close(torch.tensor(a.offset), torch.tensor([0.06, -0.04, 0.03]), atol=0.015, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_ground_truth_scores_perfectly(shape):
    render_fn, occ_fn = gt_result(shape, "blue")
    r = evaluate(render_fn, occ_fn, f"a blue {shape}", n_views=4, resolution=24)
    assert r["silhouette_iou"] == pytest.approx(1.0, abs=0.01)
    assert r["volumetric_iou"] == pytest.approx(1.0, abs=0.01)
    assert r["colour_error"] < 0.01
    assert r["rank1"] and max(r["shape_scores"], key=r["shape_scores"].get) == shape
    has_front = shape in FRONT_FEATURE_SHAPES
    assert (r["janus"], r["front_feature"]) == ((0.0, 1.0) if has_front else (None, None))
    if has_front:  # the truth is nearer its own back and front than the variants in every view, by a wide margin
        assert len(r["janus_soft"]) == len(r["front_feature_soft"]) == 4
        assert max(r["janus_soft"]) < 0.2 and min(r["front_feature_soft"]) > 0.8
    else:
        assert r["janus_soft"] is None and r["front_feature_soft"] is None


@pytest.mark.parametrize("shape,use_occ", [("sphere", False), ("cube", False), ("cone", True), ("torus", True),
                                           ("house", False), ("cylinder", True), ("tv", True), ("arrow", False)])
def test_rescaled_shifted_result_ranks_its_true_shape_first(shape, use_occ):
    render_fn, occ_fn = gt_result(shape, scale=0.85, offset=(0.05, 0.03, -0.04))
    r = evaluate(render_fn, occ_fn if use_occ else None, f"a green {shape}", n_views=4, resolution=32)
    scores = r["shape_scores"]
    assert r["rank1"]
    assert scores[shape] > 0.9 and all(scores[shape] - v > 0.04 for k, v in scores.items() if k != shape)
    assert r["scale"] == pytest.approx(0.85, rel=0.05)


def test_sphere_result_is_not_a_cube():
    render_fn, _ = gt_result("sphere", scale=1.1)
    r = evaluate(render_fn, None, "a red cube", n_views=4, resolution=32)
    assert not r["rank1"] and r["silhouette_iou"] < 0.95
    assert r["shape_scores"]["sphere"] > r["shape_scores"]["cube"]


@pytest.mark.parametrize("shape", FRONT_FEATURE_SHAPES)
def test_janus_and_front_feature_scores_tell_the_variants_apart(shape):
    # (janus, front_feature) per variant: the truth keeps its front and a plain back; the two-faced object shows its
    # front from behind as well; the faceless one shows its front nowhere.
    expected = {"true": (0.0, 1.0), "two_faced": (1.0, 1.0), "faceless": (0.0, 0.0)}
    for variant, (janus, front) in expected.items():
        for gain in (1.0, 0.7):  # a darker result must not change the verdict
            render_fn, _ = gt_result(shape, "orange", variant=variant, gain=gain)
            j = janus_score(render_fn, "orange", shape, resolution=32)
            f = front_feature_score(render_fn, "orange", shape, resolution=32)
            assert (j["score"], f["score"]) == (janus, front), (variant, gain)
            assert len(j["flags"]) == len(f["shown"]) == 4
            assert all((s > 0.5) == bool(janus) for s in j["soft"]) and all((s > 0.5) == bool(front) for s in f["soft"])


def test_evaluate_scores_a_rescaled_two_faced_result():
    render_fn, occ_fn = gt_result("tv", "purple", scale=1.1, offset=(0.02, 0.0, 0.03), variant="two_faced")
    r = evaluate(render_fn, occ_fn, "a purple tv", n_views=4, resolution=32)
    assert (r["janus"], r["front_feature"]) == (1.0, 1.0) and r["rank1"]
    with pytest.raises(ValueError, match="front"):
        janus_score(render_fn, "orange", shape="cube")
    with pytest.raises(ValueError, match="front"):
        front_feature_score(render_fn, "orange", shape="torus")


def test_nearest_surface_point_lands_on_the_surface():
    torch.manual_seed(0)
    for shape, front_x, z0 in (("house", 0.28, -0.35), ("tv", 0.06, -0.1)):
        # in front of the painted face: straight back onto it, y and z kept (the paint's coordinates)
        p = torch.rand(300, 3) * torch.tensor([0.04, 0.6, 0.3]) + torch.tensor([front_x + 0.005, -0.3, z0])
        q = nearest_surface_point(shape, p)
        torch.testing.assert_close(q, torch.cat([torch.full_like(p[:, :1], front_x), p[:, 1:]], 1), atol=1e-4,
                                   rtol=0)
        # anywhere near the surface (the roof's distance is only a lower bound, so a few points need more steps)
        p = torch.rand(20000, 3) * 1.2 - 0.6
        p = p[sdf(shape, p).abs() < 0.1]
        q = nearest_surface_point(shape, p)
        assert (sdf(shape, q).abs() < 2e-3).float().mean() > 0.9 and sdf(shape, q).abs().max() < 0.05, shape


def stretched_result(shape, colour, stretch, paint_variant):
    """A result whose shape is wrong — the object stretched per axis — painted with the true object's paint (or a
    variant's) carried onto it by nearest surface points: (render_fn, repaint_fn)."""
    s = torch.tensor(stretch)

    def repaint_fn(cams, paint):
        rgb, mask, _ = render(shape, colour, cams, sdf_fn=lambda p: sdf(shape, p / s) * s.min(),
                              albedo_fn=lambda p, base: paint(p))
        return rgb, mask.float()

    own = true_paint_on_result(shape, colour, Alignment(), paint_variant)
    return (lambda cams: repaint_fn(cams, own)), repaint_fn


@pytest.mark.parametrize("shape", PAINTED_FRONT_SHAPES)
def test_on_shape_scores_judge_the_paint_whatever_the_shape(shape):
    # A house 1.6 times as deep (a tv twice as thick, narrower and taller), its door (screen) painted right on it:
    # on its own shape the scores credit the paint; against the true house they cannot (its door's pixels move).
    stretch = {"house": (1.6, 1.0, 1.0), "tv": (2.0, 0.8, 1.25)}[shape]
    expected = {"true": (0.0, 1.0), "two_faced": (1.0, 1.0), "faceless": (0.0, 0.0)}
    for variant, (janus, front) in expected.items():
        render_fn, repaint_fn = stretched_result(shape, "orange", stretch, variant)
        j = janus_score(render_fn, "orange", shape, Alignment(), resolution=32, repaint_fn=repaint_fn)
        f = front_feature_score(render_fn, "orange", shape, Alignment(), resolution=32, repaint_fn=repaint_fn)
        assert (j["score"], f["score"]) == (janus, front), variant
        assert len(j["soft"]) == len(f["soft"]) == 4
    if shape == "house":
        render_fn, _ = stretched_result(shape, "orange", stretch, "true")
        assert front_feature_score(render_fn, "orange", shape, Alignment(), resolution=32)["score"] == 0.0
    with pytest.raises(ValueError, match="painted front"):
        front_feature_score(render_fn, "orange", "arrow", Alignment(), repaint_fn=stretched_result(
            "arrow", "orange", stretch, "true")[1])


def test_evaluate_scores_on_shape_only_for_painted_fronts():
    render_fn, repaint_fn = stretched_result("house", "blue", (0.8, 1.0, 1.3), "true")
    poses = []

    def counted(cams):
        poses.append(cams.c2w.numpy().tobytes())
        return render_fn(cams)

    r = evaluate(counted, None, "a blue house", n_views=4, resolution=32, repaint_fn=repaint_fn)
    assert (r["front_feature_on_shape"], r["janus_on_shape"]) == (1.0, 0.0)
    assert len(poses) == len(set(poses)), "a camera set rendered twice"
    assert min(r["front_feature_on_shape_soft"]) > 0.6 and len(r["janus_on_shape_soft"]) == 4
    render_fn, repaint_fn = stretched_result("arrow", "blue", (1.0, 1.0, 1.0), "true")
    r = evaluate(render_fn, None, "a blue arrow", n_views=4, resolution=32, repaint_fn=repaint_fn)
    assert r["front_feature"] == 1.0 and r["front_feature_on_shape"] is None and r["janus_on_shape_soft"] is None
