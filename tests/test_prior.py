"""The embedded prior: caption encoding, the denoiser's plumbing, the guidance wrapper, its LoRA copy, training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dreamgen.errors import GuidanceLoadError, PromptError
from dreamgen.prior.io import DEFAULT_WEIGHTS, load_prior, save_prior
from dreamgen.prior.model import PriorSpec, ShapesPrior, count_parameters, denoise
from dreamgen.world.captions import caption
from dreamgen.world.objects import COLOURS, SHAPES

REPO = Path(__file__).resolve().parent.parent
TINY = dict(block_out_channels=[32, 32, 32], layers_per_block=1, attention_head_dim=16, slot_dim=8)


def tiny_prior(seed: int = 0) -> ShapesPrior:
    torch.manual_seed(seed)
    model = ShapesPrior(PriorSpec(**TINY))
    # Random (not zero) output layers, so every input and condition reaches the output.
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return save_prior(tiny_prior(), tmp_path_factory.mktemp("prior") / "tiny.safetensors", {"note": "test"})


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
def test_forward_shapes_and_default_size():
    model = tiny_prior()
    x = torch.randn(2, 3, 32, 32)
    v = model(x, torch.tensor([0, 999]), model.encode_text(["a red cube", ""]))
    assert v.shape == x.shape and torch.isfinite(v).all()
    n = count_parameters(ShapesPrior(PriorSpec()))
    assert 2e6 <= n <= 5e6  # fp16 export stays under 10 MB


def test_denoise_unshuffles_to_patches_and_shuffles_back():
    seen = {}

    class Echo(torch.nn.Module):
        def forward(self, h, t, class_labels):
            seen["shape"] = tuple(h.shape)
            return type("Out", (), {"sample": h})()

    x = torch.randn(2, 3, 32, 32)
    out = denoise(Echo(), 2, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))
    assert seen["shape"] == (2, 12, 16, 16)
    assert torch.equal(out, x)


def test_conditioning_changes_the_prediction():
    model = tiny_prior()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([500])
    a = model(x, t, model.encode_text(["a red cube"]))
    b = model(x, t, model.encode_text(["a red cube, back view"]))
    assert (a - b).abs().max() > 1e-4


# ---- io and guidance -----------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_fp16_and_offline(tiny_weights):
    spec = json.loads(tiny_weights.with_suffix(".json").read_text())
    assert spec["spec"]["block_out_channels"] == TINY["block_out_channels"] and spec["meta"] == {"note": "test"}
    loaded = load_prior(tiny_weights)
    ref = tiny_prior()
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
    assert (g.image_size, g.latent_channels, g.num_train_timesteps) == (32, 3, 1000)
    assert g.alphas_cumprod[0] > 0.999 and g.alphas_cumprod[-1] < 1e-6  # cosine schedule, SNR ≈ 0 at T−1
    rgb = torch.rand(2, 64, 64, 3, requires_grad=True)
    x = g.encode_images(rgb)
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    x.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    flat = torch.full((1, 32, 32, 3), 0.25)
    assert torch.allclose(g.decode(g.encode_images(flat)), flat, atol=1e-6)
    with pytest.raises(PromptError):
        g.encode_text(["a red dragon"])


def test_predict_noise_is_eps_from_v(tiny_weights):
    g = _guidance(tiny_weights)
    x_t, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    emb = g.encode_text(["a red cube", ""])
    v = g.prior(x_t, t, emb)
    ab = g.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(g.predict_noise(x_t, t, emb), ab.sqrt() * v + (1 - ab).sqrt() * x_t, atol=1e-6)


def test_trainable_copy_starts_equal_and_trains_only_lora(tiny_weights):
    g = _guidance(tiny_weights)
    score = g.trainable_copy(lora_rank=2, camera_dim=16)
    x_t, t = torch.randn(3, 3, 32, 32), torch.tensor([50, 400, 950])
    emb = g.encode_text(["a red cube", "a blue torus, front view", ""])
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
packaged = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(),
                              reason=f"no packaged prior at {DEFAULT_WEIGHTS} (train: python scripts/train_prior.py)")


@packaged
def test_packaged_prior_denoises_a_red_cube_best_with_its_own_caption():
    from dreamgen.cameras import CameraConfig, make_cameras
    from dreamgen.guidance.shapes import ShapesGuidance
    from dreamgen.world.render import render

    g = ShapesGuidance()  # the packaged weights, no network
    cams = make_cameras(torch.tensor([20.0, -60.0]), torch.tensor([15.0, 30.0]), torch.tensor([1.75, 1.75]),
                        torch.tensor([55.0, 55.0]), 32, CameraConfig())
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
    assert right < 0.5 * error("a blue cube")  # measured ≈ 14× lower
    assert right < error("a red sphere")  # measured ≈ 15% lower


@packaged
def test_packaged_weights_are_small_and_describe_themselves():
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert DEFAULT_WEIGHTS.stat().st_size <= 10 * 2**20
    assert meta["spec"]["colours"] == list(COLOURS) and meta["spec"]["shapes"] == list(SHAPES)
    assert meta["meta"]["steps"] > 0


# ---- training script -----------------------------------------------------------------------------------------------
def _train_main():
    spec = importlib.util.spec_from_file_location("train_prior", REPO / "scripts" / "train_prior.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_train_script_runs_exports_and_resumes_exactly(tmp_path):
    main = _train_main()
    common = ["--device", "cpu", "--n-images", "12", "--batch-size", "2", "--sample-steps", "1", "--log-every", "1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(common + ["--steps", "3", "--out", str(straight), "--export", str(straight / "w.safetensors")])
    main(common + ["--steps", "2", "--out", str(split), "--export", ""])
    main(common + ["--steps", "3", "--out", str(split), "--export", str(split / "w.safetensors")])

    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (split / "samples_000003.png").exists()
    assert torch.equal(load_prior(straight / "w.safetensors").state_dict()["unet.conv_in.weight"],
                       load_prior(split / "w.safetensors").state_dict()["unet.conv_in.weight"])

    with pytest.raises(SystemExit, match="different settings"):
        main(["--device", "cpu", "--n-images", "24", "--batch-size", "2", "--steps", "4", "--out", str(split),
              "--export", ""])
