import math

import pytest
import torch

from dreamgen.cameras import VIEWS, CameraConfig, fov_to_focal, make_cameras
from dreamgen.errors import PromptError
from dreamgen.prompts import view_prompt
from dreamgen.world import (COLOURS, FRONT_FEATURE_SHAPES, SHAPES, VARIANTS, VOCABULARY, albedo, caption, make_dataset,
                            occupancy, parse_caption, render, sdf)
from dreamgen.world.dataset import sample_azimuths
from dreamgen.world.objects import (ARROW_HEAD_APEX, ARROW_HEAD_BASE, ARROW_HEAD_HALF, BOUND, CUBE_HALF, DOOR_COLOUR,
                                    HOUSE_BODY_HALF, SCREEN_COLOUR, SPHERE_RADIUS, TV_BODY_HALF)
from dreamgen.world.render import AMBIENT, CAMERA_LIGHT_TILT

pytestmark = pytest.mark.usefixtures("one_thread")  # small renders: a thread pool only adds overhead


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
    # TV: above its top (z = 0.37), in front of its screen (x = 0.06), below its foot (z = −0.41).
    tv_pts = torch.tensor([[0.0, 0, 1], [1.0, 0, 0.1], [0.0, 0, -1]])
    torch.testing.assert_close(sdf("tv", tv_pts), torch.tensor([0.63, 0.94, 0.59]))
    # Arrow: behind the blunt end (x = −0.58) exact; 0.1 out along the normal of a slanted head face (a plane of
    # the intersection, so exact there); beyond the apex a lower bound of the true distance.
    length, half = ARROW_HEAD_APEX - ARROW_HEAD_BASE, ARROW_HEAD_HALF
    n_x, n_y = half / math.hypot(length, half), length / math.hypot(length, half)
    mid = (ARROW_HEAD_BASE + ARROW_HEAD_APEX) / 2
    arrow = sdf("arrow", torch.tensor([[-1.0, 0, 0], [mid + 0.1 * n_x, half / 2 + 0.1 * n_y, 0], [1.0, 0, 0]]))
    torch.testing.assert_close(arrow[:2], torch.tensor([0.42, 0.1]))
    assert 0 < arrow[2] <= 1.0 - ARROW_HEAD_APEX


def test_variants_fold_the_object_across_its_front_back_plane():
    far_front, far_back = torch.tensor([[1.0, 0, 0]]), torch.tensor([[-1.0, 0, 0]])
    # two_faced: the head (front) on both ends; faceless: the blunt end (back) on both.
    torch.testing.assert_close(sdf("arrow", far_back, "two_faced"), sdf("arrow", far_front))
    torch.testing.assert_close(sdf("arrow", far_front, "faceless"), sdf("arrow", far_back))
    torch.testing.assert_close(sdf("arrow", far_front, "two_faced"), sdf("arrow", far_front))
    assert not torch.allclose(sdf("arrow", far_front), sdf("arrow", far_back))  # a geometric front
    with pytest.raises(ValueError, match="known variants"):
        sdf("arrow", far_front, "backwards")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sdf_is_1_lipschitz_and_bounded(shape, variant):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4000, 3, generator=g) * 2 - 1
    q = p + 0.05 * torch.randn(4000, 3, generator=g)
    assert ((sdf(shape, p, variant) - sdf(shape, q, variant)).abs() <= (p - q).norm(dim=-1) + 1e-5).all()
    inside = occupancy(shape, p, variant)
    assert inside.any() and (p[inside].norm(dim=-1) < BOUND).all()
    assert (occupancy(shape, torch.zeros(1, 3), variant) == (shape != "torus")).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_sdf_lower_bounds_the_distance_to_the_surface(shape):
    # Sphere tracing is safe when |sdf(p)| ≤ the distance from p to the surface: the ball of radius |sdf(p)| around
    # p must hold no point of the other sign.
    g = torch.Generator().manual_seed(1)
    p = torch.rand(300, 3, generator=g) * 1.6 - 0.8
    d = sdf(shape, p).abs()
    dirs = torch.nn.functional.normalize(torch.randn(300, 64, 3, generator=g), dim=-1)
    q = p[:, None] + 0.999 * d[:, None, None] * dirs * torch.rand(300, 64, 1, generator=g)
    same_sign = (sdf(shape, q.reshape(-1, 3)).reshape(300, 64) < 0) == (sdf(shape, p) < 0)[:, None]
    assert same_sign.all()


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="known shapes"):
        sdf("corgi", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="known colours"):
        albedo("cube", "mauve", torch.zeros(1, 3))


@pytest.mark.parametrize("shape,x,z,paint", [("house", HOUSE_BODY_HALF[0], -0.3, DOOR_COLOUR),
                                              ("tv", TV_BODY_HALF[0], 0.1, SCREEN_COLOUR)])
def test_painted_features_on_front_only_and_their_variants(shape, x, z, paint):
    front, back = torch.tensor([[x, 0.0, z]]), torch.tensor([[-x, 0.0, z]])
    green, paint = torch.tensor(COLOURS["green"]), torch.tensor(paint)
    expected = {"true": (paint, green), "two_faced": (paint, paint), "faceless": (green, green)}
    for variant, (on_front, on_back) in expected.items():
        torch.testing.assert_close(albedo(shape, "green", front, variant)[0], on_front)
        torch.testing.assert_close(albedo(shape, "green", back, variant)[0], on_back)
    # Only the paint tells front from back: the geometry is mirror-symmetric in x.
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2000, 3, generator=g) * 1.4 - 0.7
    torch.testing.assert_close(sdf(shape, p), sdf(shape, p * torch.tensor([-1.0, 1.0, 1.0])))


def test_colours_are_separated_and_contrast_with_the_background():
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


@pytest.mark.parametrize("shape", FRONT_FEATURE_SHAPES)
def test_variants_are_mirror_symmetric_and_the_true_object_is_not(shape):
    # Seen from φ and from 180° − φ (flipped left-right), a variant looks the same up to a few silhouette pixels
    # (grazing rays); the true object does not.
    cams = cams_at([160.0, 20.0], [15.0, 15.0], 1.75, 55.0, 32)
    for variant in VARIANTS:
        rgb = render(shape, "cyan", cams, variant=variant)[0]
        differ = ((rgb[0] - rgb[1].flip(1)).abs().amax(-1) > 0.15).sum()
        assert differ >= 30 if variant == "true" else differ <= 5, variant
    if shape != "arrow":  # symmetric geometry: the two-faced back is the true front, mirrored
        two_faced, true = render(shape, "cyan", cams, variant="two_faced")[0], render(shape, "cyan", cams)[0]
        assert (two_faced[0] - true[1].flip(1)).abs().mean() < 0.01


def test_arrow_head_is_wider_than_its_blunt_end():
    masks = render("arrow", "red", cams_at([0.0, 180.0], [0.0, 0.0], 1.75, 55.0, 48))[1]
    faceless = render("arrow", "red", cams_at([0.0], [0.0], 1.75, 55.0, 48), variant="faceless")[1]
    # Head-on, the head's base (0.48 wide) hides the bar (0.2) from both ends: (0.48 / 0.2)² ≈ 5.8× the area of the
    # faceless bar's end, less the perspective (the bar's end is 0.5 nearer the camera): ≈ 2.5× at 48 px.
    areas = masks.flatten(1).sum(1).float()
    assert (areas > 2 * faceless.sum()).all()


def test_house_front_back_and_mirror_identity():
    rgb, _, _ = render("house", "yellow", cams_at([0.0, 180.0], [10.0, 10.0], 1.6, 50.0, 48))
    # The door would be shaded like the wall it is on: normal ±x facing the camera, light tilted up from it.
    el = math.radians(10.0)
    n_dot_l = math.cos(el) / math.hypot(math.cos(el), math.sin(el) + CAMERA_LIGHT_TILT)
    door = torch.tensor(DOOR_COLOUR) * (AMBIENT + (1 - AMBIENT) * n_dot_l)
    door_pixels = ((rgb - door).abs().amax(-1) < 0.02).flatten(1).sum(1)
    assert door_pixels[0] > 10 and door_pixels[1] == 0
    two_faced = render("house", "yellow", cams_at([180.0], [10.0], 1.6, 50.0, 48), variant="two_faced")[0]
    assert ((two_faced - door).abs().amax(-1) < 0.02).sum() == door_pixels[0]


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
    assert (a.distance >= 1.5).all() and (a.distance <= 2.0).all() and a.distance.std() > 0.05


def test_front_feature_azimuths_are_front_biased():
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([SHAPES.index(s) for s in FRONT_FEATURE_SHAPES] * 2000 + [SHAPES.index("cube")] * 4000)
    az = sample_azimuths(idx, g, CameraConfig(), front_bias=0.7)
    assert (az.abs() <= 180).all()
    front = az.abs() <= 45
    assert abs(front[:-4000].float().mean() - 0.7) < 0.03
    assert abs(front[-4000:].float().mean() - 0.25) < 0.03  # uniform for symmetric shapes
