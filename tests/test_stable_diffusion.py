"""StableDiffusionGuidance on tiny random pipelines built in the test session (the real from_pretrained path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dreamgen.errors import GuidanceLoadError
from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance
from dreamgen.losses.base import LossInput
from dreamgen.losses.sds import SDS, SDSConfig
from dreamgen.testing import tiny_sd

T = torch.tensor([20, 500, 900])


def guidance(path, **kw) -> StableDiffusionGuidance:
    return StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(path), **kw), "cpu")


@pytest.fixture(scope="module")
def sd(tiny_sd_path) -> StableDiffusionGuidance:
    return guidance(tiny_sd_path)


@pytest.fixture(scope="module")
def sd_v(tiny_sd_vpred_path) -> StableDiffusionGuidance:
    return guidance(tiny_sd_vpred_path)


def latents(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---- loading -------------------------------------------------------------------------------------------------------
def test_loads_frozen_fp32_on_cpu(sd):
    assert sd.cfg.half_precision  # the default asks for fp16, which only CUDA gets
    assert (sd.image_size, sd.latent_channels, sd.prediction_type) == (32, 4, "epsilon")
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in sd.parameters())
    assert not any(m.training for m in sd.modules())


def test_alphas_cumprod_match_scheduler(tiny_sd_path, sd):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(tiny_sd_path, subfolder="scheduler")
    assert sd.num_train_timesteps == 1000
    torch.testing.assert_close(sd.alphas_cumprod, sched.alphas_cumprod.float())


def test_tokenizer_vocab_matches_text_encoder(sd):
    assert len(sd.tokenizer) == sd.text_encoder.config.vocab_size


def test_real_clip_vocab_tokenises_like_clip(tmp_path):
    bpe = tiny_sd.clip_bpe_vocab()
    if bpe is None:
        pytest.skip("CLIP BPE vocabulary unavailable (offline and not cached)")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd.write_clip_tokenizer(tmp_path, bpe))
    assert len(tok) == 49408
    # Reference ids of OpenAI CLIP's tokenizer for this sentence.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tok("a hamburger").input_ids
    assert len(ids) == 4 and tok.decode(ids[1:-1]) == "a hamburger"


def test_fallback_vocab_spells_words_as_single_tokens(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd.write_clip_tokenizer(tmp_path, None))
    ids = tok("a Hamburger, front view").input_ids
    assert len(ids) == 2 + 5  # bos, a, hamburger, ",", front, view, eos
    assert tok.decode(ids, skip_special_tokens=True) == "a hamburger , front view"
    assert tok("zq").input_ids[1:-1] == [tok.convert_tokens_to_ids("z"), tok.convert_tokens_to_ids("q</w>")]


def test_clip_bpe_vocab_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DREAMGEN_CLIP_BPE", raising=False)
    assert tiny_sd.clip_bpe_vocab(download=False) is None
    cached = tmp_path / "cache" / "dreamgen" / tiny_sd.BPE_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert tiny_sd.clip_bpe_vocab(download=False) == cached
    explicit = tmp_path / "mine.txt.gz"
    explicit.write_bytes(b"")
    monkeypatch.setenv("DREAMGEN_CLIP_BPE", str(explicit))
    assert tiny_sd.clip_bpe_vocab(download=False) == explicit


def test_offline_build_falls_back_to_generated_vocab(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_sd, "clip_bpe_vocab", lambda download=True: None)
    with pytest.warns(UserWarning, match="small generated vocabulary"):
        path = tiny_sd.build_tiny_pipeline(tmp_path / "p", image_size=16)
    g = guidance(path)
    assert len(g.tokenizer) == g.text_encoder.config.vocab_size == len(tiny_sd.fallback_vocab()[0])
    assert g.encode_text(["a hamburger, front view"]).shape == (1, 77, 32)


def test_make_tiny_pipeline_script(tmp_path):
    import runpy

    main = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "make_tiny_pipeline.py"))["main"]
    assert main([str(tmp_path / "p"), "--prediction-type", "v_prediction", "--image-size", "16"]) == 0
    g = guidance(tmp_path / "p")
    assert (g.prediction_type, g.image_size) == ("v_prediction", 16)


# ---- load errors ---------------------------------------------------------------------------------------------------
def load_error(pretrained: str, **kw) -> str:
    with pytest.raises(GuidanceLoadError) as info:
        guidance(pretrained, **kw)
    msg = str(info.value)
    assert "\n" not in msg and info.value.__cause__ is None
    return msg


def test_missing_folder_error(tmp_path):
    msg = load_error(str(tmp_path / "nope"))
    assert "no such folder" in msg and "nope" in msg and "hub id" in msg


def test_folder_without_unet_error(tmp_path, tiny_sd_path):
    shutil.copytree(tiny_sd_path, tmp_path / "pipe", ignore=shutil.ignore_patterns("unet"))
    msg = load_error(str(tmp_path / "pipe"))
    assert "folder has no unet/ subfolder" in msg


def test_broken_folder_error_is_one_line(tmp_path, tiny_sd_path):
    shutil.copytree(tiny_sd_path, tmp_path / "pipe")
    (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    msg = load_error(str(tmp_path / "pipe"))
    assert msg.startswith(f"could not load Stable Diffusion from folder '{tmp_path / 'pipe'}'")


def test_unknown_hub_id_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = load_error("dreamgen-tests/no-such-model")
    assert "'dreamgen-tests/no-such-model' offline" in msg
    assert str(tmp_path / "hf" / "hub") in msg  # HF_HOME read at load time


def test_local_files_only_overrides_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "offline" in load_error("dreamgen-tests/no-such-model", local_files_only=True)


# ---- images and text -----------------------------------------------------------------------------------------------
def test_encode_images_resizes_and_passes_gradient(sd):
    rgb = torch.rand(2, 24, 24, 3, requires_grad=True)
    x = sd.encode_images(rgb)
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float32
    x.square().sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_decode_shape_and_range(sd):
    rgb = sd.decode(latents(2))
    assert rgb.shape == (2, 32, 32, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_text_embeddings_are_cached_per_string(sd):
    calls = []
    handle = sd.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        first = sd.encode_text(["a red cube, front view", "a cat", "a red cube, front view"])
        again = sd.encode_text(["a cat", "a red cube, front view"])
        sd.encode_text(["a cat", "a dog"])
    finally:
        handle.remove()
    assert calls == [2, 1]  # duplicates and cached prompts are not re-encoded
    assert first.shape == (3, 77, 32)
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    assert not torch.equal(first[0], first[1])


# ---- denoiser ------------------------------------------------------------------------------------------------------
def test_predict_noise_is_the_unet_output_for_epsilon_models(sd):
    x_t, emb = latents(), sd.encode_text(["a cat", "", "a dog"])
    eps = sd.predict_noise(x_t, T, emb)
    assert eps.shape == x_t.shape and eps.dtype == torch.float32
    torch.testing.assert_close(eps, sd.unet(x_t, T, encoder_hidden_states=emb).sample)


def test_v_prediction_is_converted_to_eps(sd, sd_v):
    assert sd_v.prediction_type == "v_prediction"
    x_t, emb = latents(), sd_v.encode_text(["a cat", "", "a dog"])
    v = sd_v.unet(x_t, T, encoder_hidden_states=emb).sample
    ab = sd_v.alphas_cumprod[T].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(sd_v.predict_noise(x_t, T, emb), ab.sqrt() * v + (1 - ab).sqrt() * x_t)
    # Same seed, same weights: only the parameterisation differs.
    assert not torch.allclose(sd_v.predict_noise(x_t, T, emb), sd.predict_noise(x_t, T, emb))


def test_attention_slicing_gives_the_same_prediction(tiny_sd_path, sd):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    sliced = guidance(tiny_sd_path, enable_attention_slicing=True)
    assert any(isinstance(p, SlicedAttnProcessor) for p in sliced.unet.attn_processors.values())
    x_t, emb = latents(), sd.encode_text(["a cat"] * 3)
    torch.testing.assert_close(sliced.predict_noise(x_t, T, emb), sd.predict_noise(x_t, T, emb))


def test_sds_gradient_reaches_rgb(sd):
    torch.manual_seed(0)
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    x = sd.encode_images(rgb)
    cond, uncond = sd.encode_text(["a cat"] * 2), sd.encode_text([""] * 2)
    out = SDS(SDSConfig(guidance_scale=7.5), sd)(LossInput(x=x, cond=cond, uncond=uncond))
    out.loss.backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


# ---- trainable copy ------------------------------------------------------------------------------------------------
def test_trainable_copy_equals_base_at_init(sd):
    score = sd.trainable_copy(lora_rank=4, camera_dim=16)
    x_t, emb = latents(), sd.encode_text(["a cat", "", "a dog"])
    base = sd.predict_noise(x_t, T, emb)
    with torch.no_grad():
        torch.testing.assert_close(score.predict_noise(x_t, T, emb, None), base)
        torch.testing.assert_close(score.predict_noise(x_t, T, emb, torch.randn(3, 16)), base)


def test_trainable_copy_trains_only_lora_and_camera(sd):
    score = sd.trainable_copy(lora_rank=4, camera_dim=16)
    names = [n for n, p in score.named_parameters() if p.requires_grad]
    assert any(n.startswith("lora_layers.") for n in names) and "camera_embedding.linear_2.weight" in names
    assert all(n.startswith(("lora_layers.", "camera_embedding.")) for n in names)
    assert {id(p) for p in score.trainable_parameters()} == {id(p) for p in score.parameters()}
    lora_in_unet = [n for n, p in score.unet.named_parameters() if p.requires_grad]
    assert lora_in_unet and all("lora_" in n or n.startswith("class_embedding.") for n in lora_in_unet)
    # Checkpoints hold the trainable weights only, not a second UNet.
    assert sum(v.numel() for v in score.state_dict().values()) == sum(p.numel() for p in score.parameters())
    assert not any("lora" in n for n, _ in sd.unet.named_parameters())  # the base UNet was copied, not modified


def test_optimiser_step_changes_copy_not_base(sd):
    score = sd.trainable_copy(lora_rank=4, camera_dim=16)
    x_t, emb, cam = latents(), sd.encode_text(["a cat", "", "a dog"]), torch.randn(3, 16)
    base_before = sd.predict_noise(x_t, T, emb).detach()
    before = score.predict_noise(x_t, T, emb, cam).detach()
    opt = torch.optim.SGD(score.trainable_parameters(), lr=0.1)
    for _ in range(2):  # the zero-init camera head needs one step before its first layer gets a gradient
        opt.zero_grad()
        (score.predict_noise(x_t, T, emb, cam) - torch.randn_like(x_t)).square().mean().backward()
        opt.step()
    after = score.predict_noise(x_t, T, emb, cam).detach()
    assert (after - before).abs().max() > 1e-4
    assert not torch.allclose(after, score.predict_noise(x_t, T, emb, None).detach())  # camera now matters
    torch.testing.assert_close(sd.predict_noise(x_t, T, emb), base_before)


def test_trainable_copy_state_dict_round_trip(sd):
    a, b = sd.trainable_copy(4), sd.trainable_copy(4)
    with torch.no_grad():
        for p in a.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    b.load_state_dict(a.state_dict())
    x_t, emb, cam = latents(), sd.encode_text(["a cat"] * 3), torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(b.predict_noise(x_t, T, emb, cam), a.predict_noise(x_t, T, emb, cam))


def test_lora_pretrained_uses_other_unet_and_its_parameterisation(tiny_sd_path, tiny_sd_vpred_path, sd_v):
    g = guidance(tiny_sd_path, lora_pretrained=str(tiny_sd_vpred_path))
    score = g.trainable_copy(4)
    assert score.prediction_type == "v_prediction"
    x_t, emb = latents(), g.encode_text(["a cat", "", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(score.predict_noise(x_t, T, emb, None), sd_v.predict_noise(x_t, T, emb))


def test_lora_pretrained_with_other_schedule_is_refused(tmp_path, tiny_sd_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_sd_path, other, ignore=shutil.ignore_patterns("vae", "text_encoder", "tokenizer"))
    cfg_file = other / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "beta_end": 0.02}))
    g = guidance(tiny_sd_path, lora_pretrained=str(other))
    with pytest.raises(GuidanceLoadError, match="noise schedule differs"):
        g.trainable_copy(4)


def test_sd21_base_preset_has_the_real_unet_size():
    """The benchmark preset matches SD 2.1-base's UNet (865.9 M parameters), built on the meta device (no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    from dreamgen.testing.tiny_sd import preset_configs

    with torch.device("meta"):
        unet = UNet2DConditionModel(**preset_configs("sd21-base")["unet"])
    assert abs(sum(p.numel() for p in unet.parameters()) - 865_910_724) < 1_000
    with pytest.raises(ValueError, match="unknown preset"):
        preset_configs("sd9")
