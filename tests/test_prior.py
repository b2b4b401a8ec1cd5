"""The embedded prior: caption encoding, the denoiser's plumbing, the camera condition, the guidance wrappers, the
LoRA copy, training and the evaluation's pieces. v1 = 32 px text-only spec, v2 = 64 px with a camera input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dreamgen.cameras import CameraConfig, make_cameras
from dreamgen.errors import GuidanceLoadError, PromptError
from dreamgen.prior.io import PACKAGED, load_prior, save_prior
from dreamgen.prior.model import CAMERA_FEATURES, PriorSpec, ShapesPrior, count_parameters, denoise
from dreamgen.world.captions import caption
from dreamgen.world.objects import COLOURS, FRONT_FEATURE_SHAPES, SHAPES

REPO = Path(__file__).resolve().parent.parent
TINY = dict(block_out_channels=[32, 32, 32], layers_per_block=1, attention_head_dim=16, slot_dim=8)
SPECS = {"v1": lambda: PriorSpec(**TINY), "v2": lambda: PriorSpec.v2(**TINY)}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: a thread pool only adds overhead


def tiny_prior(seed: int = 0, version: str = "v1") -> ShapesPrior:
    torch.manual_seed(seed)
    model = ShapesPrior(SPECS[version]())
    # Random (not zero) output layers, so every input and condition reaches the output.
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)
    return model.eval()


def cameras(azimuth: list[float], resolution: int = 32):
    n = len(azimuth)
    return make_cameras(torch.tensor(azimuth), torch.full((n,), 15.0), torch.full((n,), 1.75), torch.full((n,), 55.0),
                        resolution, CameraConfig())


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny priors, by version."""
    folder = tmp_path_factory.mktemp("prior")
    return {v: save_prior(tiny_prior(version=v), folder / f"tiny_{v}.safetensors", {"note": "test"}) for v in SPECS}


@pytest.fixture(params=list(SPECS))
def tiny_weights(request, weights) -> Path:
    return weights[request.param]


# ---- text ---------------------------------------------------------------------------------------------------------
def test_tokenizer_accepts_every_world_caption_and_keeps_them_apart():
    model = tiny_prior()
    caps = [caption(c, s, v) for c in COLOURS for s in SHAPES for v in (None, "front", "side", "back", "overhead")]
    tokens = model.tokenizer(caps)
    assert tokens.shape == (len(caps), 3)
    assert len({tuple(r) for r in tokens.tolist()}) == len(caps)  # no two captions share slots
    assert model.tokenizer(["A Red  Cube."]).tolist() == model.tokenizer(["a red cube"]).tolist()
    assert model.tokenizer([""]).tolist() == [[0, 0, 0]]  # the null prompt
    emb = model.encode_text(["a red cube", "a blue cube", ""])
    assert emb.shape == (3, model.spec.cond_dim)
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[0], emb[2])


@pytest.mark.parametrize("prompt", ["a red dragon", "a red cube, left view", "a cube"])
def test_tokenizer_rejects_unknown_or_malformed_prompts_listing_the_vocabulary(prompt):
    with pytest.raises(PromptError) as e:
        tiny_prior().tokenizer([prompt])
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in ("purple", "torus", "overhead"))


def test_weights_without_a_colour_reject_it():
    model = ShapesPrior(PriorSpec(**TINY, colours=["red", "blue"]))
    assert model.tokenizer(["a blue cube"]).tolist() == [[2, 2, 0]]
    with pytest.raises(PromptError, match="green"):
        model.tokenizer(["a green cube"])


# ---- denoiser ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forward_shapes_and_embedding_layout(version):
    model = tiny_prior(version=version)
    size = model.spec.image_size
    x = torch.randn(2, 3, size, size)
    emb = model.encode_text(["a red tv", ""])
    v = model(x, torch.tensor([0, 999]), emb)
    assert v.shape == x.shape and torch.isfinite(v).all()
    camera_part = len(CAMERA_FEATURES) + 1 if version == "v2" else 0
    assert (size, emb.shape[1]) == ((64, model.spec.cond_dim + camera_part) if version == "v2"
                                    else (32, model.spec.cond_dim))
    assert (model.camera_encoder is None) == (version == "v1")


def test_default_specs_fit_the_size_budget(tmp_path):
    assert 2e6 <= count_parameters(ShapesPrior(PriorSpec())) <= 5e6  # v1
    torch.manual_seed(0)
    v2 = ShapesPrior(PriorSpec.v2())
    assert (v2.spec.image_size, v2.spec.patch, v2.spec.camera_dim) == (64, 4, 4)
    assert 2e6 <= count_parameters(v2) <= 5e6
    weights = save_prior(v2, tmp_path / "v2.safetensors")
    assert weights.stat().st_size <= 10 * 2**20


def test_spec_rejects_inconsistent_sizes_and_loads_v1_files_as_text_only():
    with pytest.raises(ValueError, match="camera_dim"):
        PriorSpec(camera_dim=3)
    with pytest.raises(ValueError, match="multiple of 16"):
        PriorSpec.v2(image_size=40)
    v1_file = PriorSpec().to_dict()
    del v1_file["camera_dim"], v1_file["camera_distance"]  # keys that v1's shapes_prior.json does not have
    assert PriorSpec.from_dict(v1_file).camera_dim == 0


@pytest.mark.parametrize("patch,size", [(2, 32), (4, 64)])
def test_denoise_unshuffles_to_patches_and_shuffles_back(patch, size):
    seen = {}

    class Echo(torch.nn.Module):
        def forward(self, h, t, class_labels):
            seen["shape"] = tuple(h.shape)
            return type("Out", (), {"sample": h})()

    x = torch.randn(2, 3, size, size)
    out = denoise(Echo(), patch, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))
    assert seen["shape"] == (2, 3 * patch * patch, 16, 16)  # either version: a 16×16 grid
    assert torch.equal(out, x)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_conditioning_changes_the_prediction(version):
    model = tiny_prior(version=version)
    s = model.spec.image_size
    x, t = torch.randn(1, 3, s, s), torch.tensor([500])
    a = model(x, t, model.encode_text(["a red cube"]))
    b = model(x, t, model.encode_text(["a red cube, back view"]))
    assert (a - b).abs().max() > 1e-4


def test_null_camera_is_the_text_only_path_and_a_camera_changes_the_prediction():
    model = tiny_prior(version="v2")
    x, t = torch.randn(3, 3, 64, 64), torch.tensor([300, 300, 300])
    text = model.encode_text(["a red house"] * 3)  # null camera
    assert torch.equal(text[:, -1], torch.zeros(3))
    feats = model.camera_features(torch.tensor([0.0, 180.0, 0.0]), torch.full((3,), 15.0),
                                  torch.tensor([1.5, 1.75, 2.0]))
    torch.testing.assert_close(feats[:, :2], torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(feats[:, 3], torch.tensor([-1.0, 0.0, 1.0]))
    with_cam = model.fuse_camera(text, feats)
    # Clearing the camera (explicitly, or by dropping it as training does) restores the text-only embedding.
    assert torch.equal(model.fuse_camera(with_cam, None), text)
    assert torch.equal(model.fuse_camera(text, feats, present=torch.zeros(3, dtype=torch.bool)), text)
    v_text, v_cam = model(x, t, text), model(x, t, with_cam)
    assert torch.equal(model.condition(text), model.condition(text)[:1].expand(3, -1))  # one null vector for all
    assert (v_text - v_cam).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert (v_cam[0] - v_cam[1]).abs().max() > 1e-4  # front and back cameras differ
    with pytest.raises(ValueError, match="no camera input"):
        tiny_prior(version="v1").fuse_camera(text, feats)


# ---- io and guidance -----------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_fp16_and_offline(tiny_weights):
    spec = json.loads(tiny_weights.with_suffix(".json").read_text())
    assert spec["spec"]["block_out_channels"] == TINY["block_out_channels"] and spec["meta"] == {"note": "test"}
    loaded = load_prior(tiny_weights)
    ref = tiny_prior(version="v2" if spec["spec"]["camera_dim"] else "v1")
    assert ref.state_dict().keys() == loaded.state_dict().keys()
    for (k, a), b in zip(ref.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b), k


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(GuidanceLoadError) as e:
        load_prior(tmp_path / "none.safetensors")
    assert "scripts/train_prior.py" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_weights_are_a_load_error(tiny_weights, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    bad.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(GuidanceLoadError, match="could not load"):
        load_prior(bad)


def _guidance(path: Path):
    from dreamgen.guidance.shapes import ShapesGuidance, ShapesGuidanceConfig

    return ShapesGuidance(ShapesGuidanceConfig(weights=str(path)))


def test_guidance_interface(tiny_weights):
    g = _guidance(tiny_weights)
    s = g.image_size
    assert (g.latent_channels, g.num_train_timesteps) == (3, 1000) and s == g.prior.spec.image_size
    assert g.alphas_cumprod[0] > 0.999 and g.alphas_cumprod[-1] < 1e-6  # cosine schedule, SNR ≈ 0 at T−1
    for render_size in (32, 96):  # renders are upsampled or downsampled to the prior's size
        rgb = torch.rand(2, render_size, render_size, 3, requires_grad=True)
        x = g.encode_images(rgb)
        assert x.shape == (2, 3, s, s) and x.min() >= -1 and x.max() <= 1
        x.sum().backward()
        assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    flat = torch.full((1, s, s, 3), 0.25)
    assert torch.allclose(g.decode(g.encode_images(flat)), flat, atol=1e-6)
    with pytest.raises(PromptError):
        g.encode_text(["a red dragon"])
    emb = g.encode_text(["a red cube", ""])
    assert torch.equal(g.condition(emb, cameras([0.0, 90.0])), emb)  # text only: cameras are ignored


def test_camera_guidance_fuses_each_render_camera(weights):
    from dreamgen.guidance.shapes import ShapesCamGuidance, ShapesCamGuidanceConfig

    g = ShapesCamGuidance(ShapesCamGuidanceConfig(weights=str(weights["v2"])))
    cams = cameras([0.0, 180.0])
    cond = g.encode_text(["a red tv, front view", "a red tv, back view"])
    uncond = g.encode_text([""]).expand(4, -1)  # 2 particles × 2 cameras, particle-major
    fused = g.condition(uncond, cams)
    feats = g.prior.camera_features(cams.azimuth, cams.elevation, cams.distance)
    assert torch.equal(fused[:, -1], torch.ones(4)) and torch.equal(fused[:, :-1][:, -4:], feats.repeat(2, 1))
    assert torch.equal(fused[:, :g.prior.spec.cond_dim], uncond[:, :g.prior.spec.cond_dim])  # the text is kept
    x_t, t = torch.randn(2, 3, 64, 64), torch.tensor([400, 400])
    eps_text, eps_cam = g.predict_noise(x_t, t, cond), g.predict_noise(x_t, t, g.condition(cond, cams))
    assert (eps_text - eps_cam).abs().max() > 1e-4
    with pytest.raises(ValueError, match="tiled"):
        g.condition(g.encode_text(["a red tv"] * 3), cams)


def test_camera_guidance_needs_camera_weights(weights):
    from dreamgen.guidance.shapes import ShapesCamGuidance, ShapesCamGuidanceConfig
    from dreamgen.registry import lookup

    assert lookup("guidance", "shapes-cam").cls is ShapesCamGuidance
    with pytest.raises(GuidanceLoadError, match="camera condition") as e:
        ShapesCamGuidance(ShapesCamGuidanceConfig(weights=str(weights["v1"])))
    assert "\n" not in str(e.value) and "--guidance shapes" in str(e.value) and str(weights["v1"]) in str(e.value)
    with pytest.raises(GuidanceLoadError, match="camera condition"):  # refused from the spec, before a run starts
        ShapesCamGuidance.check_prompt("a red cube", ShapesCamGuidanceConfig(weights=str(weights["v1"])))


def test_texture_stage_can_load_its_own_prior_weights_and_resumes_with_them(weights, tmp_path):
    """texture.weights: the NeRF and DMTet stages run on the run's weights, the texture stage on its own — its loss,
    its prompts (each set of weights embeds text its own way) — and a resume in that stage loads them again."""
    from dreamgen.config import load_config
    from dreamgen.prompts import PromptSet
    from dreamgen.session import Session
    from dreamgen.testing import SMALL_RUN

    other = save_prior(tiny_prior(seed=1, version="v2"), tmp_path / "other.safetensors")
    overrides = [*SMALL_RUN, "stages=[nerf,dmtet,texture]", "trainer.steps=1", "fine.steps=1", "fine.resolution=16",
                 "fine.geometry.grid_resolution=8", "texture.steps=2", f"texture.weights={other}",
                 "renderer.num_samples=8", "trainer.preview_every=0", "trainer.progress=false", "export.resolution=32"]
    cfg = load_config(None, overrides, prompt="a red cube", seed=0,
                      **{"guidance.name": "shapes-cam", "guidance.weights": str(weights["v2"])})
    tr = Session.new(cfg, run_dir=tmp_path / "run").trainer
    run_prompts = tr.prompts.cond_views.clone()
    while tr.scene.stage.name != "texture":
        assert tr.guidance.cfg.weights == str(weights["v2"]) and tr.loss.guidance is tr.guidance
        tr.train_step() if tr.step < tr.stage_end(tr.scene.stage_index) else tr.enter_stage(tr.scene.stage_index + 1)
    assert tr.guidance.cfg.weights == str(other) and tr.loss.guidance is tr.guidance
    assert torch.equal(tr.prompts.cond_views, PromptSet(tr.guidance, cfg.prompt, cfg.prompts).cond_views)
    assert not torch.equal(tr.prompts.cond_views, run_prompts)
    tr.train_step()
    tr.save_checkpoint()
    resumed = Session.resume(tmp_path / "run").trainer
    assert resumed.scene.stage.name == "texture" and resumed.guidance.cfg.weights == str(other)
    assert resumed.loss.guidance is resumed.guidance


def test_texture_weights_are_checked_when_the_config_is_composed(weights):
    from dreamgen.config import load_config

    def compose(texture_weights: str):
        return load_config(None, ["stages=[nerf,dmtet,texture]", f"texture.weights={texture_weights}"],
                           prompt="a red cube", **{"guidance.name": "shapes-cam", "guidance.weights": str(weights["v2"])})

    with pytest.raises(GuidanceLoadError, match="camera condition"):
        compose(str(weights["v1"]))  # text-only weights for a camera-aware guidance
    with pytest.raises(GuidanceLoadError, match="not found"):
        compose("/nowhere/w.safetensors")
    assert compose(str(weights["v2"])).texture.weights == str(weights["v2"])


def test_predict_noise_is_eps_from_v(tiny_weights):
    g = _guidance(tiny_weights)
    s = g.image_size
    x_t, t = torch.randn(2, 3, s, s), torch.tensor([10, 900])
    emb = g.encode_text(["a red cube", ""])
    v = g.prior(x_t, t, emb)
    ab = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(g.predict_noise(x_t, t, emb), ab.sqrt() * v + (1 - ab).sqrt() * x_t, atol=1e-6)


def test_trainable_copy_starts_equal_and_trains_only_lora(tiny_weights):
    g = _guidance(tiny_weights)
    score = g.trainable_copy(lora_rank=2, camera_dim=16)
    s = g.image_size
    x_t, t = torch.randn(3, 3, s, s), torch.tensor([50, 400, 950])
    emb = g.encode_text(["a red cube", "a blue torus, front view", ""])
    if g.prior.spec.camera_dim:  # a shapes-cam embedding: the prior's own camera condition passes through too
        emb = g.prior.fuse_camera(emb, g.prior.camera_features(*torch.tensor([[0.0, 90.0, 180.0], [15.0] * 3,
                                                                              [1.75] * 3])))
    cam = torch.randn(3, 16)
    ref = g.predict_noise(x_t, t, emb)
    assert torch.allclose(score.predict_noise(x_t, t, emb, cam), ref, atol=1e-5)
    assert torch.allclose(score.predict_noise(x_t, t, emb, None), ref, atol=1e-5)

    trainable = score.trainable_parameters()
    names = {n for n, p in score.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n or "camera_mlp" in n for n in names)
    assert not any("conv1.base_layer" in k for k in score.state_dict())  # the frozen UNet is not checkpointed
    score.predict_noise(x_t, t, emb, cam).square().mean().backward()
    lora_b = [p for n, p in score.named_parameters() if ".B." in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert score.camera_mlp[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in score.unet.parameters() if not p.requires_grad)
    assert all(p.grad is None for p in g.parameters())

    opt = torch.optim.SGD(trainable, lr=1.0)
    opt.step()
    assert (score.predict_noise(x_t, t, emb, cam) - ref).abs().max() > 1e-4
    assert torch.equal(g.predict_noise(x_t, t, emb), ref)  # the guidance itself is untouched


# ---- the packaged weights ------------------------------------------------------------------------------------------
packaged = pytest.mark.skipif(not all(w.exists() for w in PACKAGED.values()),
                              reason="no packaged prior in dreamgen/assets (train: python scripts/train_prior.py)")


@packaged
@pytest.mark.parametrize("name", ["shapes", "shapes64"])
def test_packaged_prior_denoises_a_red_cube_best_with_its_own_caption(name):
    from dreamgen.registry import lookup
    from dreamgen.world.render import render

    g = lookup("guidance", name).cls()  # the packaged weights (v1, v2), no network
    cams = make_cameras(torch.tensor([20.0, -60.0]), torch.tensor([15.0, 30.0]), torch.tensor([1.75, 1.75]),
                        torch.tensor([55.0, 55.0]), g.image_size, CameraConfig())
    rgb, _, _ = render("cube", "red", cams)
    x = g.encode_images(rgb)

    def error(prompt: str) -> float:
        gen = torch.Generator().manual_seed(0)  # the same (t, eps) draws for every prompt: a paired comparison
        emb = g.encode_text([prompt]).expand(2, -1)
        total = 0.0
        for t in (200, 400, 600):
            for _ in range(4):
                eps = torch.randn(x.shape, generator=gen)
                tt = torch.full((2,), t)
                ab = g.alphas_cumprod[tt].view(-1, 1, 1, 1)
                total += (g.predict_noise(ab.sqrt() * x + (1 - ab).sqrt() * eps, tt, emb) - eps).square().mean().item()
        return total

    right = error("a red cube")
    assert right < 0.5 * error("a blue cube")  # measured ≈ 14× lower (v1)
    assert right < error("a red sphere")  # measured ≈ 15% lower (v1)


@packaged
@pytest.mark.parametrize("version,n_shapes,camera_dim", [("v1", 6, 0), ("v2", 8, 4), ("v2-pose", 8, 4)])
def test_packaged_weights_are_small_and_describe_themselves(version, n_shapes, camera_dim):
    weights = PACKAGED[version]
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert weights.stat().st_size <= 10 * 2**20
    shapes = meta["spec"]["shapes"]
    # New world objects are appended, so older weights know a prefix of today's objects (v1: the first six).
    assert meta["spec"]["colours"] == list(COLOURS) and len(shapes) == n_shapes and shapes == list(SHAPES[:n_shapes])
    assert meta["spec"].get("camera_dim", 0) == camera_dim and meta["meta"]["steps"] > 0


@packaged
def test_pose_weights_take_the_tvs_layout_from_the_camera_where_v2_draws_it_face_on():
    """At t = T only the condition can set the layout: the mean first-step estimate of "a cyan tv" seen side-on is a
    slab (width / height measured ≈ 0.57; the true mean view ≈ 0.4) for v2-pose, the face-on screen (≈ 0.9) for v2."""
    from dreamgen.prior.evaluate import mean_outline_aspect
    from dreamgen.prior.sample import sample, to_uint8

    def side_on(version: str) -> float:
        model, n, view = load_prior(version), 8, CameraConfig()
        full = lambda v: torch.full((n,), float(v))  # noqa: E731
        camera = model.camera_features(full(90.0), full(view.eval_elevation), full(view.eval_distance))
        x0 = sample(model, ["a cyan tv"] * n, 1, 3.0, torch.Generator().manual_seed(0), camera)
        return mean_outline_aspect(to_uint8(x0)).item()

    assert side_on("v2-pose") < 0.7 < 0.85 < side_on("v2")


@packaged
def test_guidance_refuses_an_object_its_weights_do_not_know():
    from dreamgen.config import load_config

    with pytest.raises(PromptError, match="not trained on the tv.*shapes64 or shapes-cam knows it"):
        load_config(None, [], prompt="a cyan tv", **{"guidance.name": "shapes"})
    assert load_config(None, [], prompt="a cyan tv", **{"guidance.name": "shapes64"}).guidance.weights == "v2"


# ---- training script -----------------------------------------------------------------------------------------------
def _script_main(name: str = "train_prior"):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _train_main():
    return _script_main("train_prior")


COMMON = ["--preset", "tiny", "--device", "cpu", "--n-images", "8", "--batch-size", "2", "--log-every", "1"]


def test_train_script_runs_exports_and_resumes_exactly(tmp_path, capsys):
    main = _train_main()
    straight, split = tmp_path / "straight", tmp_path / "split"
    no_grid = ["--sample-steps", "0"]
    main(COMMON + no_grid + ["--steps", "3", "--out", str(straight), "--export", str(straight / "w.safetensors")])
    main(COMMON + no_grid + ["--steps", "2", "--out", str(split), "--export", ""])
    main(COMMON + ["--sample-steps", "1", "--steps", "3", "--out", str(split),
                   "--export", str(split / "w.safetensors")])
    log = capsys.readouterr().out
    assert "resumed at step 2" in log and "step 3/3 loss" in log and "\r" not in log  # plain lines for a log file

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 and a["spec"]["camera_dim"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (split / "samples_000003.png").exists()
    a_w, b_w = load_prior(straight / "w.safetensors"), load_prior(split / "w.safetensors")
    assert a_w.spec.camera_dim == 4 and a_w.spec.image_size == 64
    for k, v in a_w.state_dict().items():
        assert torch.equal(v, b_w.state_dict()[k]), k

    with pytest.raises(SystemExit, match="different settings"):
        main(COMMON[:4] + ["--n-images", "16", "--batch-size", "2", "--steps", "4", "--out", str(split),
                           "--export", "", "--sample-steps", "0"])


def test_weight_floor_lifts_only_the_high_noise_weights():
    from dreamgen.prior.train import snr_weights

    ac = PriorSpec.v2().make_scheduler().alphas_cumprod.float()
    plain, floored = snr_weights(ac, 5.0), snr_weights(ac, 5.0, floor=0.25)
    assert plain[-1] < 1e-3 and plain[800] < 0.1  # min-SNR all but ignores the steps where the layout forms
    assert floored.min() == pytest.approx(0.25) and floored[-1] == pytest.approx(0.25)
    above = plain >= 0.25
    assert above.any() and torch.equal(floored[above], plain[above])


def test_high_noise_share_trains_the_noisiest_tenth_at_weight_one():
    from dreamgen.prior.train import training_loss

    model = tiny_prior(version="v2")
    seen: list[torch.Tensor] = []

    class Spy:  # records the timesteps the loss evaluates the model at
        embed = staticmethod(model.embed)

        def __call__(self, x_t, t, emb):
            seen.append(t)
            return model(x_t, t, emb)

    ac = PriorSpec.v2().make_scheduler().alphas_cumprod.float()
    x0, tokens = torch.rand(256, 3, 64, 64) * 2 - 1, torch.ones(256, 3, dtype=torch.long)
    camera, zero = torch.zeros(256, len(CAMERA_FEATURES)), torch.zeros(len(ac))

    def loss(share: float) -> torch.Tensor:
        with torch.no_grad():
            return training_loss(Spy(), x0, tokens, camera, ac, zero, 0.1, 0.25, torch.Generator().manual_seed(0),
                                 share)

    assert loss(0.0) == 0  # every min-SNR weight zeroed: nothing left
    assert loss(1.0) > 0 and seen[-1].min() >= 900  # all from the top tenth, at weight 1
    loss(0.5)
    top = (seen[-1] >= 900).float().mean().item()
    assert 0.45 < top < 0.65  # half the batch, plus the uniform draws that land there anyway (≈ 5 %)


def test_init_fine_tunes_exported_weights_and_keeps_their_spec(tmp_path, weights):
    main = _train_main()
    # --preset v1 is overridden by the starting weights' spec (the tiny v2 layout with a camera input).
    args = ["--preset", "v1", "--device", "cpu", "--n-images", "8", "--batch-size", "2", "--sample-steps", "0",
            "--init", str(weights["v2"]), "--weight-floor", "0.2"]
    main(args + ["--steps", "0", "--out", str(tmp_path / "zero"), "--export", str(tmp_path / "zero.safetensors")])
    start, copied = load_prior(weights["v2"]), load_prior(tmp_path / "zero.safetensors")
    assert copied.spec.camera_dim == start.spec.camera_dim == 4
    for k, v in start.state_dict().items():
        assert torch.equal(v, copied.state_dict()[k]), k

    main(args + ["--steps", "2", "--out", str(tmp_path / "two"), "--export", str(tmp_path / "two.safetensors")])
    tuned = load_prior(tmp_path / "two.safetensors")
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    with pytest.raises(SystemExit, match="different settings.*weight_floor"):
        main(args[:-1] + ["0.3", "--steps", "3", "--out", str(tmp_path / "two"), "--export", ""])
    with pytest.raises(SystemExit, match="--init"):
        main(args[:-4] + ["--init", str(tmp_path / "nowhere.safetensors"), "--steps", "1",
                          "--out", str(tmp_path / "x"), "--export", ""])


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    class Payload:  # what a crafted pickle could do on load
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"step": 1, "model": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match="cannot resume"):
        _train_main()(COMMON + ["--steps", "1", "--out", str(tmp_path), "--export", "", "--sample-steps", "0"])
    assert not (tmp_path / "pwned").exists()


# ---- evaluation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_eval_conditions_and_grid_layout(version):
    from dreamgen.prior.evaluate import eval_rows, sample_grid

    model = tiny_prior(version=version)
    rows = eval_rows(model)
    per_colour = len(SHAPES) + 2 * len(FRONT_FEATURE_SHAPES) * (2 if version == "v2" else 1)
    assert len(rows) == len(COLOURS) * per_colour
    assert rows[len(SHAPES):len(SHAPES) + 2] == [("a red house, front view", "red", "house", "front", None),
                                                 ("a red house, back view", "red", "house", "back", None)]
    assert sum(r[4] == 180.0 for r in rows) == (len(COLOURS) * len(FRONT_FEATURE_SHAPES) if version == "v2" else 0)
    images = torch.zeros(len(rows), 3, 4, 4, 3, dtype=torch.uint8)
    images[len(SHAPES), 1] = 255  # the red house's front view, second sample
    out = sample_grid(images, len(COLOURS), per_row=2)
    assert out.shape == (len(COLOURS) * 5 + 1, 2 * per_colour * 5 + 1, 3)  # one line per colour, 4 px + 1 px pad
    assert (out[1:5, 1 + 5 * (2 * len(SHAPES) + 1):][:, :4] == 255).all()


def test_outline_aspect_measures_the_bounding_box_over_white():
    from dreamgen.prior.evaluate import outline_aspect

    images = torch.full((3, 16, 16, 3), 255, dtype=torch.uint8)
    images[0, 4:12, 2:6] = 0  # 4 wide, 8 tall
    images[1, 1:3, 0:16] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # 16 wide, 2 tall: red is off white
    aspect = outline_aspect(images)
    assert aspect[0].item() == pytest.approx(0.5) and aspect[1].item() == pytest.approx(8.0)
    assert torch.isnan(aspect[2])  # nothing drawn


def test_mean_outline_aspect_outlines_the_mean_image_at_half_its_largest_departure():
    from dreamgen.prior.evaluate import mean_outline_aspect

    images = torch.full((3, 16, 16, 3), 255, dtype=torch.uint8)
    images[:, 4:12, 6:10] = 0  # a 4 x 8 core in all three
    images[:2, 4:12, 0:16] = 0  # two are 16 wide: in the mean those pixels depart 2/3 as far, inside the outline
    assert mean_outline_aspect(images).item() == pytest.approx(16 / 8)
    images[:2, 4:12, 0:6] = 128  # greyer: 1/3 as far as the core, outside it
    images[:2, 4:12, 10:16] = 128
    assert mean_outline_aspect(images).item() == pytest.approx(4 / 8)


def test_layout_errors_score_the_first_estimate_against_the_true_mean_view():
    from dreamgen.prior.evaluate import POSE_AZIMUTHS, layout_errors

    model = tiny_prior(version="v2")
    report = layout_errors(model, n=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    tv = report["per_shape"]["tv"]
    assert list(tv) == list(POSE_AZIMUTHS) and tv[90.0]["true"] < 0.5 < 1.0 < tv[0.0]["true"]
    assert len({round(v["text_only"], 6) for v in tv.values()}) == 1  # no camera, one estimate
    assert report["camera"] >= 0 and report["text_only"] >= 0


def test_pose_errors_compare_camera_and_text_only_samples_with_the_true_outline():
    from dreamgen.prior.evaluate import POSE_AZIMUTHS, pose_errors

    model = tiny_prior(version="v2")
    report = pose_errors(model, n=2, steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert set(report["per_shape"]) == set(FRONT_FEATURE_SHAPES)
    tv = report["per_shape"]["tv"]
    assert list(tv) == list(POSE_AZIMUTHS)
    assert tv[90.0]["true"] < 0.5 < 1.0 < tv[0.0]["true"]  # a thin panel: narrow side-on, wide face-on
    assert report["per_shape"]["arrow"][90.0]["true"] > 1.5  # a long arrow seen side-on
    # Text-only samples do not depend on the camera: one set of ratios for every azimuth.
    assert len({round(v["text_only"], 6) for v in tv.values() if v["text_only"] == v["text_only"]}) <= 1
    assert report["camera"] >= 0 and report["text_only"] >= 0


def test_eval_script_pose_only_writes_pose_json_and_refuses_text_only_weights(tmp_path, weights, capsys):
    main = _script_main("eval_prior")
    args = ["--device", "cpu", "--n", "2", "--steps", "2", "--pose-only", "--out", str(tmp_path)]
    assert main(args + ["--weights", str(weights["v2"])]) == 0
    pose = json.loads((tmp_path / "pose.json").read_text())
    assert set(pose) == {"pose_error", "layout_error"}
    assert all(set(pose[k]) == {"camera", "text_only", "per_shape"} for k in pose)
    assert '"layout_error"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--weights", str(weights["v1"])])
    assert exit_info.value.code == 2 and "no camera input" in capsys.readouterr().err


@pytest.mark.parametrize("resolution", [32, 64])
def test_classifier_heads_and_facing_lookup(resolution):
    from dreamgen.prior.evaluate import WorldClassifier, facing_of, front_facing

    net = WorldClassifier(resolution, width=8)
    c, s, f = net(torch.zeros(2, resolution, resolution, 3, dtype=torch.uint8))
    assert (c.shape, s.shape, f.shape) == ((2, len(COLOURS)), (2, len(SHAPES)), (2, len(FRONT_FEATURE_SHAPES)))
    facing = torch.tensor([[True, False, False], [False, False, True]])
    shape_idx = torch.tensor([SHAPES.index("house"), SHAPES.index("arrow")])
    assert facing_of(facing, shape_idx).tolist() == [True, True]
    assert front_facing(torch.tensor([0.0, 89.0, 91.0, 180.0, -60.0, 300.0])).tolist() == [True, True, False, False,
                                                                                           True, True]
