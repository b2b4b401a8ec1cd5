import math

import pytest
import torch

from dreamgen.cameras import VIEWS, CameraConfig, fov_to_focal, make_cameras
from dreamgen.errors import PromptError
from dreamgen.prompts import view_prompt
from dreamgen.world import (COLOURS, SHAPES, VOCABULARY, albedo, caption, make_dataset, occupancy, parse_caption,
                            render, sdf)
from dreamgen.world.dataset import sample_azimuths
from dreamgen.world.objects import (BOUND, CUBE_HALF, DOOR_COLOUR, HOUSE_BODY_HALF,
                                    SPHERE_RADIUS, front_feature_albedo)
from dreamgen.world.render import AMBIENT, CAMERA_LIGHT_TILT


def cams_at(az, el, dist, fov, res):
    n = len(az)
    return make_cameras(torch.tensor(az, dtype=torch.float32), torch.tensor(el, dtype=torch.float32),
                        torch.full((n,), float(dist)), torch.full((n,), float(fov)), res, CameraConfig())


# ---- objects -------------------------------------------------------------------------------------------------------

def test_sdf_exact_values():
    p = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5], [0.0, 0.0, -1.0]])
    torch.testing.assert_close(sdf("sphere", p[:2]), torch.tensor([-0.45, 0.55]))
    cube = sdf("cube", p[1:4])
    torch.testing.assert_close(cube, torch.tensor([1 - 0.34, 0.1 - 0.34, math.sqrt(3) * (0.5 - 0.34)]))
    torch.testing.assert_close(sdf("cylinder", torch.tensor([[0.0, 0, 1], [1.0, 0, 0]])), torch.tensor([0.62, 0.65]))
    torch.testing.assert_close(sdf("torus", torch.tensor([[0.36, 0, 0], [0.0, 0, 0]])), torch.tensor([-0.16, 0.2]))
    # Cone: above the apex, below the base, and 0.1 out along the slant's normal from its midpoint.
    h, r = 0.4, 0.42
    n_r, n_z = 2 * h / math.hypot(2 * h, r), r / math.hypot(2 * h, r)
    cone_pts = torch.tensor([[0.0, 0, h + 0.1], [0.0, 0, -h - 0.1], [r / 2 + 0.1 * n_r, 0, 0.1 * n_z]])
    torch.testing.assert_close(sdf("cone", cone_pts), torch.tensor([0.1, 0.1, 0.1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sdf("house", p[4:]), torch.tensor([0.6]))


@pytest.mark.parametrize("shape", SHAPES)
def test_sdf_is_1_lipschitz_and_bounded(shape):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4000, 3, generator=g) * 2 - 1
    q = p + 0.05 * torch.randn(4000, 3, generator=g)
    assert ((sdf(shape, p) - sdf(shape, q)).abs() <= (p - q).norm(dim=-1) + 1e-5).all()
    inside = occupancy(shape, p)
    assert inside.any() and (p[inside].norm(dim=-1) < BOUND).all()
    assert (occupancy(shape, torch.zeros(1, 3)) == (shape != "torus")).all()


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="known shapes"):
        sdf("corgi", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="known colours"):
        albedo("cube", "mauve", torch.zeros(1, 3))


def test_house_features_on_front_only():
    x = HOUSE_BODY_HALF[0]
    door_front, door_back = torch.tensor([[x, 0.0, -0.3]]), torch.tensor([[-x, 0.0, -0.3]])
    torch.testing.assert_close(albedo("house", "green", door_front)[0], torch.tensor(DOOR_COLOUR))
    torch.testing.assert_close(albedo("house", "green", door_back)[0], torch.tensor(COLOURS["green"]))
    assert len(COLOURS) >= 8
    rgb = torch.tensor(list(COLOURS.values()))
    assert torch.cdist(rgb, rgb).add(torch.eye(len(rgb))).min() > 0.25  # well separated
    assert (torch.cdist(rgb, torch.ones(1, 3)) > 0.5).all()  # contrast with the white background


# ---- renderer ------------------------------------------------------------------------------------------------------

def test_sphere_silhouette_matches_projected_disc():
    d, fov, res = 1.8, 50.0, 64
    _, mask, depth = render("sphere", "red", cams_at([30.0], [20.0], d, fov, res))
    radius_px = fov_to_focal(fov, res) * math.tan(math.asin(SPHERE_RADIUS / d))
    assert abs(mask.sum().item() / (math.pi * radius_px**2) - 1) < 0.02
    c = res // 2
    assert abs(depth[0, c, c].item() - (d - SPHERE_RADIUS)) < 0.01  # pixel centre is 1/2 px off-axis


def test_cube_front_silhouette_is_square_and_shading_is_lambertian():
    d, fov, res = 1.6, 60.0, 64
    rgb, mask, _ = render("cube", "blue", cams_at([0.0], [0.0], d, fov, res))
    half_px = fov_to_focal(fov, res) * CUBE_HALF / (d - CUBE_HALF)
    rows, cols = mask[0].any(1).nonzero().squeeze(1), mask[0].any(0).nonzero().squeeze(1)
    assert abs((rows[-1] - rows[0] + 1).item() - 2 * half_px) <= 1.0
    assert abs((cols[-1] - cols[0] + 1).item() - 2 * half_px) <= 1.0
    assert abs(mask.sum().item() / (2 * half_px) ** 2 - 1) < 0.05
    # Front face normal +x, camera light along normalize(+x + tilt·z).
    expected = torch.tensor(COLOURS["blue"]) * (AMBIENT + (1 - AMBIENT) / math.hypot(1.0, CAMERA_LIGHT_TILT))
    torch.testing.assert_close(rgb[0, res // 2, res // 2], expected, atol=1e-3, rtol=0)
    assert (rgb[0][~mask[0]] == 1.0).all()  # white background


def test_supersampling_keeps_coverage_and_range():
    cams = cams_at([10.0, 100.0], [15.0, 30.0], 1.75, 55.0, 24)
    rgb1, m1, _ = render("torus", "pink", cams)
    rgb2, m2, _ = render("torus", "pink", cams, supersample=2)
    assert rgb2.shape == (2, 24, 24, 3) and rgb2.min() >= 0 and rgb2.max() <= 1
    assert (m1 != m2).float().mean() < 0.05
    assert (rgb1 - rgb2).abs().mean() < 0.03


def test_house_front_back_and_mirror_identity():
    rgb, _, _ = render("house", "yellow", cams_at([0.0, 180.0], [10.0, 10.0], 1.6, 50.0, 48))
    # The door would be shaded like the wall it is on: normal ±x facing the camera, light tilted up from it.
    el = math.radians(10.0)
    n_dot_l = math.cos(el) / math.hypot(math.cos(el), math.sin(el) + CAMERA_LIGHT_TILT)
    door = torch.tensor(DOOR_COLOUR) * (AMBIENT + (1 - AMBIENT) * n_dot_l)
    door_pixels = ((rgb - door).abs().amax(-1) < 0.02).flatten(1).sum(1)
    assert door_pixels[0] > 10 and door_pixels[1] == 0
    # A two-faced house seen from φ equals the true house seen from 180° − φ, mirrored left-right.
    two_faced = lambda p, base: front_feature_albedo(p, albedo("house", base, p), -1.0)  # noqa: E731
    back = render("house", "yellow", cams_at([160.0], [15.0], 1.75, 55.0, 48), albedo_fn=two_faced)[0]
    mirrored = render("house", "yellow", cams_at([20.0], [15.0], 1.75, 55.0, 48))[0].flip(2)
    assert (back - mirrored).abs().mean() < 0.01


def test_render_rgb_colours_per_camera():
    cams = cams_at([0.0, 0.0], [15.0, 15.0], 1.75, 55.0, 16)
    rgb, mask, _ = render("sphere", ["red", "green"], cams)
    mean = [rgb[i][mask[i]].mean(0) for i in range(2)]
    assert mean[0].argmax() == 0 and mean[1].argmax() == 1


# ---- captions ------------------------------------------------------------------------------------------------------

def test_caption_round_trip():
    for colour in COLOURS:
        for shape in SHAPES:
            assert parse_caption(caption(colour, shape)) == (colour, shape, None)
            for view in VIEWS:
                text = caption(colour, shape, view)
                assert text == view_prompt(caption(colour, shape), view)
                assert parse_caption(text) == (colour, shape, view)
    assert caption("orange", "cone") == "an orange cone"
    assert parse_caption("  A  Red   CUBE ,  Back View. ") == ("red", "cube", "back")
    assert parse_caption("blue torus") == ("blue", "torus", None)
    assert set(VOCABULARY) >= set(COLOURS) | set(SHAPES) | set(VIEWS)


@pytest.mark.parametrize("text,word", [("a red corgi", "'corgi'"), ("a shiny cube", "'shiny'"),
                                       ("a red cube, left view", "'left'")])
def test_unknown_words_list_vocabulary(text, word):
    with pytest.raises(PromptError) as e:
        parse_caption(text)
    msg = str(e.value)
    assert "\n" not in msg and word in msg and "stable-diffusion" in msg
    assert all(w in msg for w in [*COLOURS, *SHAPES, *VIEWS])


@pytest.mark.parametrize("text", ["red", "a cube red", "a red cube, front", "a red cube, front view, back view", ""])
def test_malformed_captions_rejected(text):
    with pytest.raises(PromptError, match="expected"):
        parse_caption(text)


# ---- dataset -------------------------------------------------------------------------------------------------------

def test_dataset_reproducible_balanced_and_consistent():
    n_pairs = len(COLOURS) * len(SHAPES)
    a = make_dataset(2 * n_pairs, resolution=12, seed=3)
    b = make_dataset(2 * n_pairs, resolution=12, seed=3)
    c = make_dataset(2 * n_pairs, resolution=12, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (2 * n_pairs, 12, 12, 3)
    pairs = a.colour_idx * len(SHAPES) + a.shape_idx
    assert torch.equal(torch.bincount(pairs, minlength=n_pairs), torch.full((n_pairs,), 2))
    colours = list(COLOURS)
    for i, text in enumerate(a.captions):
        colour, shape, view = parse_caption(text)
        assert (colour, shape) == (colours[a.colour_idx[i]], SHAPES[a.shape_idx[i]])
        assert view == (VIEWS[a.view_idx[i]] if a.has_view[i] else None)
    assert 0.3 < a.has_view.float().mean() < 0.7
    assert (a.images.float().mean((1, 2, 3)) < 250).all()  # every image shows an object on white


def test_house_azimuths_are_front_biased():
    g = torch.Generator().manual_seed(0)
    house, cube = SHAPES.index("house"), SHAPES.index("cube")
    idx = torch.tensor([house] * 4000 + [cube] * 4000)
    az = sample_azimuths(idx, g, CameraConfig(), front_bias=0.7)
    assert (az.abs() <= 180).all()
    front = az.abs() <= 45
    assert abs(front[:4000].float().mean() - 0.7) < 0.03
    assert abs(front[4000:].float().mean() - 0.25) < 0.03  # uniform for symmetric shapes
