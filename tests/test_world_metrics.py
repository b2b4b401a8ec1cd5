import pytest
import torch

from dreamgen.cameras import CameraConfig, CameraSampler
from dreamgen.world import (SHAPES, Alignment, albedo, evaluate, foreground_colour_error, janus_score, occupancy,
                            render, silhouette_iou, transform_cameras, volumetric_iou)
from dreamgen.world.metrics import align_by_occupancy, align_by_silhouette
from dreamgen.world.objects import SPHERE_RADIUS, front_feature_albedo


def gt_result(shape, colour="red", scale=1.0, offset=(0.0, 0.0, 0.0), albedo_fn=None, gain=1.0):
    """A 'text-to-3D result' that is the true object mapped by p -> scale·p + offset (render_fn, occ_fn)."""
    c = torch.tensor(offset)

    def render_fn(cams):
        rgb, mask, _ = render(shape, colour, transform_cameras(cams, 1 / scale, -c / scale), albedo_fn=albedo_fn)
        return rgb * gain, mask.float()

    return render_fn, (lambda p: occupancy(shape, (p - c) / scale))


def two_faced(p, base):
    return front_feature_albedo(p, albedo("house", base, p), -1.0)


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
    assert r["janus"] == (0.0 if shape == "house" else None)


@pytest.mark.parametrize("shape,use_occ", [("sphere", False), ("cube", False), ("cone", True), ("torus", True),
                                           ("house", False), ("cylinder", True)])
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


def test_janus_detector_flags_two_faced_house_only():
    for gain in (1.0, 0.7):  # a darker result must not change the verdict
        true_fn, _ = gt_result("house", "orange", gain=gain)
        janus_fn, _ = gt_result("house", "orange", albedo_fn=two_faced, gain=gain)
        true_score = janus_score(true_fn, "orange", resolution=32)
        janus = janus_score(janus_fn, "orange", resolution=32)
        assert true_score["score"] == 0.0 and all(s < 0.5 for s in true_score["soft"])
        assert janus["score"] == 1.0 and len(janus["flags"]) == 4
    # Through evaluate, with a rescaled two-faced house.
    render_fn, occ_fn = gt_result("house", "purple", scale=1.1, offset=(0.02, 0.0, 0.03), albedo_fn=two_faced)
    r = evaluate(render_fn, occ_fn, "a purple house", n_views=4, resolution=32)
    assert r["janus"] == 1.0 and r["rank1"]
    with pytest.raises(ValueError, match="front"):
        janus_score(true_fn, "orange", shape="cube")
