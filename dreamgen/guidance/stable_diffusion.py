"""Stable Diffusion 1.x/2.x as a frozen guidance, loaded with diffusers' ``from_pretrained``.

``pretrained`` is a diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or
a Hugging Face Hub id. Downloads go to the usual cache (HF_HOME / HF_HUB_CACHE); HF_HUB_OFFLINE=1 makes loading use
the cache only. Every loading failure becomes a one-line :class:`GuidanceLoadError` that says what was tried and what
to do about it.

Renders are encoded to VAE latents (×scaling_factor) at the model's native resolution. ``predict_noise`` always
returns ε: a v-prediction model's output is converted with ε = a_t·v + s_t·x_t.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.errors import GuidanceLoadError
from dreamgen.guidance.base import Guidance, LoRAScore, alpha_sigma
from dreamgen.registry import register

log = logging.getLogger("dreamgen")
PIPELINE_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as in ProlificDreamer
EXAMPLE_ID = "stabilityai/stable-diffusion-2-1-base"


@dataclass
class StableDiffusionConfig:
    name: str = "stable-diffusion"
    pretrained: str = EXAMPLE_ID  # diffusers pipeline folder or hub id
    half_precision: bool = True  # fp16 weights on CUDA; CPU always runs fp32
    enable_attention_slicing: bool = False  # lower peak memory at some speed cost
    local_files_only: bool | None = None  # None: follow HF_HUB_OFFLINE
    # Weights load from safetensors only: pickle (.bin/.ckpt) files can run code when loaded. True (for a source you
    # trust) also accepts pickle weights, with a warning.
    allow_pickle: bool = False
    lora_pretrained: str | None = None  # UNet for trainable_copy (e.g. SD 2.1 v-pred for VSD); None: the same UNet


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_cache_dir() -> str:
    # Read at load time, not at import time as huggingface_hub's constants are, so a changed HF_HOME is honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0].rstrip(".") if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else is meant as a folder.
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def _check_source(source: str, subfolders: tuple[str, ...]) -> None:
    """Fail early, with a precise message, on folders that cannot be a diffusers pipeline."""
    hint = f"pass a diffusers pipeline folder or a hub id, e.g. --guidance {EXAMPLE_ID}"
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GuidanceLoadError(f"could not load Stable Diffusion from '{source}': it is a file, not a folder; "
                                    f"{hint}")
        for sub in subfolders:
            if not (path / sub).is_dir():
                raise GuidanceLoadError(f"could not load Stable Diffusion from '{source}': folder has no {sub}/ "
                                        f"subfolder; {hint}")
    elif _looks_like_path(source):
        raise GuidanceLoadError(f"could not load Stable Diffusion from '{source}': no such folder; {hint}")


def _load_error(source: str, offline: bool, e: BaseException) -> GuidanceLoadError:
    if Path(source).expanduser().is_dir():
        return GuidanceLoadError(f"could not load Stable Diffusion from folder '{source}': {_first_line(e)}; "
                                 f"check that it is a complete diffusers SD 1.x/2.x pipeline")
    if offline:
        return GuidanceLoadError(
            f"could not load Stable Diffusion '{source}' offline from the Hugging Face cache {_hub_cache_dir()}: "
            f"{_first_line(e)}; download it once with network access (unset HF_HUB_OFFLINE), set HF_HOME to the cache "
            f"that has it, or pass a local diffusers pipeline folder")
    return GuidanceLoadError(
        f"could not download Stable Diffusion '{source}' from the Hugging Face Hub: {_first_line(e)}; check the id "
        f"and the network, or set HF_HUB_OFFLINE=1 to use the cache, or pass a local diffusers pipeline folder")


def _loading_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    # HfHubHTTPError and the offline/cache-miss errors are OSErrors; malformed configs and ids are ValueErrors.
    return (OSError, ValueError, KeyError, EntryNotFoundError, HfHubHTTPError)


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class _Loader:
    """Shared ``from_pretrained`` arguments and error translation for one source."""

    def __init__(self, source: str, local_files_only: bool | None, allow_pickle: bool = False):
        self.source = source
        self.offline = _env_flag("HF_HUB_OFFLINE") if local_files_only is None else local_files_only
        self.kwargs = {"cache_dir": _hub_cache_dir(), "local_files_only": self.offline}
        self.allow_pickle = allow_pickle

    def load(self, cls, subfolder: str, **kwargs):
        try:
            return cls.from_pretrained(self.source, subfolder=subfolder, **self.kwargs, **kwargs)
        except _loading_errors() as e:
            raise _load_error(self.source, self.offline, e) from None

    def load_weights(self, cls, subfolder: str, **kwargs):
        """A model with weights: safetensors only unless pickle is allowed (then with a one-line warning)."""
        folder = Path(self.source).expanduser() / subfolder
        if folder.is_dir() and not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles and not self.allow_pickle:
                raise GuidanceLoadError(
                    f"refusing to load {folder / pickles[0]}: pickle weights can run code when loaded, and dreamgen "
                    f"loads safetensors only; convert the pipeline to safetensors, or, if you trust its source, set "
                    f"guidance.allow_pickle=true")
            if pickles:
                log.warning("warning: loading pickle weights %s (guidance.allow_pickle=true): only do this for a "
                            "source you trust", folder / pickles[0])
        # None lets the library prefer safetensors and fall back to pickle files; True accepts safetensors only.
        return self.load(cls, subfolder, use_safetensors=None if self.allow_pickle else True, **kwargs)

    def unet_and_schedule(self, dtype: torch.dtype) -> tuple[nn.Module, Tensor, str]:
        """(unet, alphas_cumprod [T] float32, prediction_type) of the source's training schedule."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        unet = self.load_weights(UNet2DConditionModel, "unet", torch_dtype=dtype)
        # The training schedule only: any SD scheduler config (PNDM, DDIM, ...) gives the same betas to DDPM.
        sched = self.load(DDPMScheduler, "scheduler")
        prediction_type = sched.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise GuidanceLoadError(f"could not load Stable Diffusion from '{self.source}': prediction_type "
                                    f"{prediction_type!r} is not supported (valid: {', '.join(PREDICTION_TYPES)})")
        return unet, sched.alphas_cumprod.float().clone(), prediction_type


def _to_eps(out: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """UNet output -> ε (float32). v = a_t·ε − s_t·x0 and x_t = a_t·x0 + s_t·ε give ε = a_t·v + s_t·x_t."""
    out = out.float()
    if prediction_type == "epsilon":
        return out
    a, s = alpha_sigma(alphas_cumprod, t, out)
    return a * out + s * x_t.float()


def weights_available(source: str) -> bool:
    """Whether ``source`` can load without a download: a pipeline folder, or a hub id whose pipeline index and UNet
    config are in the Hugging Face cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "model_index.json").is_file()
    if _looks_like_path(source):
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        return all(isinstance(try_to_load_from_cache(source, f, cache_dir=_hub_cache_dir()), str)
                   for f in ("model_index.json", "unet/config.json"))
    except ValueError:  # not a valid repo id
        return False


@register("guidance", "stable-diffusion", config=StableDiffusionConfig, family="stable-diffusion", latent_stride=8,
          summary="Stable Diffusion 1.x/2.x (diffusers folder or hub id) in VAE latent space")
class StableDiffusionGuidance(Guidance):
    def __init__(self, cfg: StableDiffusionConfig, device: str | torch.device = "cpu"):
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer
        from diffusers import AutoencoderKL

        self.cfg = cfg
        device = torch.device(device)
        self.dtype = torch.float16 if cfg.half_precision and device.type == "cuda" else torch.float32
        _check_source(cfg.pretrained, PIPELINE_SUBFOLDERS)
        loader = _Loader(cfg.pretrained, cfg.local_files_only, cfg.allow_pickle)
        unet, alphas_cumprod, self.prediction_type = loader.unet_and_schedule(self.dtype)
        self.tokenizer = loader.load(CLIPTokenizer, "tokenizer")
        self.unet = unet.to(device)
        self.vae = loader.load_weights(AutoencoderKL, "vae", torch_dtype=self.dtype).to(device)
        # Cast after loading: transformers renamed its torch_dtype argument to dtype in 4.56.
        self.text_encoder = loader.load_weights(CLIPTextModel, "text_encoder").to(device=device, dtype=self.dtype)
        self.requires_grad_(False)
        self.eval()
        if cfg.enable_attention_slicing:
            self.unet.set_attention_slice("auto")
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(device), persistent=False)

        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = int(self.unet.config.sample_size) * self.vae_scale_factor  # 512 for SD 2.1-base
        self.latent_channels = int(self.unet.config.in_channels)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self._text_cache: dict[str, Tensor] = {}  # prompt -> [L,D] embedding, so each string is encoded once

    # ---- images ------------------------------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,H,W,3] in [0,1] -> latents [B,4,h,w] float32 at the native size; gradients flow through the VAE."""
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((x * 2 - 1).to(self.dtype)).latent_dist
        return (posterior.sample() * self.scaling_factor).float()

    def decode(self, x: Tensor) -> Tensor:
        """latents [B,4,h,w] -> rgb [B,H,W,3] in [0,1] float32."""
        img = self.vae.decode((x / self.scaling_factor).to(self.dtype)).sample
        return (img.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    # ---- text --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> [N,77,D] last hidden states of the text encoder (cached per string)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
            self._text_cache.update(zip(missing, hidden))
        return torch.stack([self._text_cache[p] for p in prompts])

    # ---- denoiser ----------------------------------------------------------------------------------------------
    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text_emb.to(self.dtype)).sample
        return _to_eps(out, x_t, t, self.alphas_cumprod, self.prediction_type)

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> StableDiffusionLoRAScore:
        """ε_ψ for VSD/ESD/ASD: a LoRA copy of this UNet (or of ``cfg.lora_pretrained``'s) with a camera MLP."""
        source = self.cfg.lora_pretrained
        if source is None:
            unet, prediction_type = copy.deepcopy(self.unet), self.prediction_type
        else:
            _check_source(source, ("unet", "scheduler"))
            loader = _Loader(source, self.cfg.local_files_only, self.cfg.allow_pickle)
            unet, alphas_cumprod, prediction_type = loader.unet_and_schedule(self.dtype)
            # The losses noise with the guidance's schedule, so the copy must have been trained on the same one.
            if alphas_cumprod.shape != self.alphas_cumprod.shape or not torch.allclose(
                    alphas_cumprod.to(self.device), self.alphas_cumprod, atol=1e-6):
                raise GuidanceLoadError(f"could not use '{source}' as lora_pretrained: its noise schedule differs "
                                        f"from the guidance's '{self.cfg.pretrained}'; pick an SD model of the same "
                                        f"family")
            unet = unet.to(self.device)
        return StableDiffusionLoRAScore(unet, self.alphas_cumprod, prediction_type, lora_rank, camera_dim, self.dtype)


class StableDiffusionLoRAScore(LoRAScore):
    """ε_ψ(x_t, t, y, c): a frozen SD UNet + peft LoRA on its attention projections + a camera MLP.

    The camera MLP is the UNet's ``class_embedding`` (added to the timestep embedding). Its last layer and the LoRA
    B matrices start at zero, so ε_ψ equals the frozen UNet's ε at initialisation for every camera.
    The UNet itself is deliberately not a registered submodule: ``state_dict`` (and so every run checkpoint) holds
    only the trainable LoRA and camera weights, not a second copy of the whole UNet.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction_type: str, lora_rank: int,
                 camera_dim: int, dtype: torch.dtype):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        if unet.class_embedding is not None:
            raise ValueError("this UNet already has a class embedding; the camera MLP would replace it")
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS,
                                    init_lora_weights=True))
        self.adopt_unet(unet, alphas_cumprod, camera_dim)
        device = alphas_cumprod.device
        # fp32 master weights for what is trained, even on an fp16 UNet (peft casts activations to them).
        self.lora_layers.to(device=device, dtype=torch.float32).requires_grad_(True)
        self.camera_embedding = TimestepEmbedding(camera_dim, unet.time_embedding.linear_1.out_features).to(device)
        nn.init.zeros_(self.camera_embedding.linear_2.weight)
        nn.init.zeros_(self.camera_embedding.linear_2.bias)
        unet.class_embedding = self.camera_embedding  # UNet casts its output to the sample dtype
        self.prediction_type = prediction_type
        self.dtype = dtype

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B,4,h,w], t [B], text_emb [B,77,D], camera [B,camera_dim] or None (null camera) -> ε [B,4,h,w]."""
        out = self.unet(x_t.to(self.dtype), t, encoder_hidden_states=text_emb.to(self.dtype),
                        class_labels=self.camera_or_null(camera, x_t)).sample
        return _to_eps(out, x_t, t, self.alphas_cumprod, self.prediction_type)
