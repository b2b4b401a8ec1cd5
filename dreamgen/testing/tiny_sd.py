"""A tiny, randomly initialised Stable-Diffusion-compatible pipeline folder (no downloads from a model hub).

The folder has the layout of a real SD 1.x/2.x diffusers pipeline (model_index.json, unet/, vae/, text_encoder/,
tokenizer/ with vocab.json + merges.txt, scheduler/), so ``StableDiffusionGuidance`` loads it through the very same
``from_pretrained`` code as real weights. Its images mean nothing; it exercises shapes, dtypes and gradients.

The tokenizer is CLIP's real BPE vocabulary when it can be found: it ships inside the ``open_clip_torch`` wheel on
PyPI (``open_clip/bpe_simple_vocab_16e6.txt.gz``), which :func:`clip_bpe_vocab` fetches once with pip (without
installing it) into a cache. Offline, a small vocabulary generated from a word list stands in, with a warning.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
# CLIP keeps the first 49152 - 256 - 2 merges of the file (after its version line): 48894 merges, 49408 tokens.
NUM_CLIP_MERGES = 49152 - 256 - 2

# Words the offline fallback vocabulary spells as single tokens: the prompts tests and the 2-D lab use, and the view
# suffixes of dreamgen.prompts. Anything else still tokenises, character by character.
FALLBACK_WORDS = (
    "a an the of on in with and photo cat dog hamburger cube sphere red green blue yellow white black wooden metal "
    "chair table car house tree flower front side back overhead view render highly detailed 3d dslr cute small big"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character map (the BPE alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dreamgen"


def _download_bpe(dest: Path) -> bool:
    """Fetch the open_clip wheel with pip (no install) and extract the BPE file to ``dest``; False on any failure."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", OPEN_CLIP_WHEEL, "--no-deps", "--quiet", "--timeout", "20",
               "-d", tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            wheel = next(Path(tmp).glob("open_clip_torch-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                data = z.read(f"open_clip/{BPE_FILE}")
        except (OSError, subprocess.SubprocessError, StopIteration, KeyError, zipfile.BadZipFile):
            return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    part.write_bytes(data)
    part.replace(dest)  # atomic: concurrent test sessions never read half a file
    return True


def clip_bpe_vocab(download: bool = True) -> Path | None:
    """Path of CLIP's ``bpe_simple_vocab_16e6.txt.gz``: $DREAMGEN_CLIP_BPE, else the cache, else fetched with pip.

    Returns None when none of these works (offline and not cached).
    """
    env = os.environ.get("DREAMGEN_CLIP_BPE")
    if env and Path(env).is_file():
        return Path(env)
    cached = _cache_dir() / BPE_FILE
    if cached.is_file():
        return cached
    if download and _download_bpe(cached):
        return cached
    return None


def clip_vocab_from_bpe(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """open_clip's merges file -> (vocab, merges) exactly as CLIP's SimpleTokenizer numbers them."""
    lines = gzip.decompress(Path(bpe_gz).read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : NUM_CLIP_MERGES + 1]  # line 0 is the "#version" header
    return _vocab_from_merges(merges), merges


def fallback_vocab(words: tuple[str, ...] | list[str] = FALLBACK_WORDS) -> tuple[dict[str, int], list[str]]:
    """A small BPE (same alphabet and numbering scheme as CLIP) whose merges spell each word left to right."""
    merges: list[str] = []
    seen: set[str] = set()
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            left += right
    return _vocab_from_merges(merges), merges


def _vocab_from_merges(merges: list[str]) -> dict[str, int]:
    # CLIP's order: 256 byte characters, the same with "</w>", one token per merge, then the two special tokens.
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_clip_tokenizer(out_dir: str | os.PathLike, bpe_gz: Path | None) -> Path:
    """Write a HF CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json) like SD's tokenizer/."""
    if bpe_gz is None:
        vocab, merges = fallback_vocab()
    else:
        vocab, merges = clip_vocab_from_bpe(bpe_gz)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": BOS, "eos_token": EOS,
              "unk_token": EOS, "pad_token": EOS, "do_lower_case": True}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def preset_configs(preset: str, image_size: int = 32, vocab_size: int = 49408) -> dict[str, dict]:
    """Constructor kwargs of the UNet, VAE and CLIP text config for a preset.

    ``tiny``: renders ``image_size``², latents [4, image_size/4, image_size/4], 32-wide text embeddings.
    ``sd21-base``: the shapes of Stable Diffusion 2.1-base (865.9 M-parameter UNet, 512² renders, OpenCLIP-H text
    encoder), for throughput benchmarks with random weights: FLOPs are what matter there, not the weights.
    """
    if preset == "tiny":
        latent = image_size // 4  # three VAE blocks: two downsamplings
        return {
            "unet": dict(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
                         block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=(2, 4), norm_num_groups=32, use_linear_projection=True),
            "vae": dict(sample_size=image_size, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(16, 32, 32), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
            "text": dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_LENGTH, projection_dim=32),
        }
    if preset == "sd21-base":
        return {
            "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(320, 640, 1280, 1280),
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                         attention_head_dim=(5, 10, 20, 20), norm_num_groups=32, use_linear_projection=True),
            "vae": dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
            "text": dict(vocab_size=vocab_size, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=MAX_LENGTH, projection_dim=512,
                         hidden_act="gelu"),
        }
    raise ValueError(f"unknown preset {preset!r}; valid: tiny, sd21-base")


def build_tiny_pipeline(path: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon",
                        image_size: int = 32, preset: str = "tiny") -> Path:
    """Save a randomly initialised SD pipeline of a :func:`preset_configs` preset to ``path``.

    Uses CLIP's real vocabulary when :func:`clip_bpe_vocab` finds it, else a small generated one (with a warning).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
    path = Path(path)
    bpe = clip_bpe_vocab()
    if bpe is None:
        warnings.warn("CLIP's BPE vocabulary is not available (offline, not cached, DREAMGEN_CLIP_BPE unset); "
                      "the tiny pipeline uses a small generated vocabulary instead", stacklevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, bpe))

    cfgs = preset_configs(preset, image_size, len(tokenizer))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfgs["unet"])
    vae = AutoencoderKL(**cfgs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **cfgs["text"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    # SD's training schedule (scaled_linear 0.00085..0.012 over 1000 steps), as in every SD 1.x/2.x scheduler config.
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    # Real SD folders ship vocab.json + merges.txt rather than tokenizer.json: keep that layout so it is what loads.
    shutil.rmtree(path / "tokenizer")
    write_clip_tokenizer(path / "tokenizer", bpe)
    return path
