"""The embedded prior: a small pixel-space diffusion model of the procedural world, three guidance modes.

- ``--guidance shapes``: the 32-px v1 weights, text only: the default on a CPU (six objects; docs/prior.md says
  why v1 stays the text-only teacher).
- ``--guidance shapes64``: the 64-px v2 weights (eight objects), text only (the prior's null camera). Its training
  photos are front-biased, so this is the Janus-prone setting.
- ``--guidance shapes-cam``: the v2 weights told each render's camera (azimuth relative to the object's front,
  elevation, distance) through :meth:`ShapesCamGuidance.condition`.

The weights are package data (``dreamgen/assets/shapes_prior_{v1,v2,v2_pose}.{safetensors,json}``, trained by
``scripts/train_prior.py``); ``guidance.weights`` takes ``v1``, ``v2``, ``v2-pose`` (v2 fine-tuned to take the
layout from the camera, docs/prior.md) or a path. Its space is RGB in [-1,1] at the
prior's size, so ``encode_images`` is a differentiable antialiased resize. Prompts are world captions ("a red cube",
"a red cube, front view"); words outside the weights' vocabulary are a :class:`PromptError`. The model predicts v;
``predict_noise`` returns ε = a_t·v + s_t·x_t.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.cameras import Cameras
from dreamgen.errors import GuidanceLoadError, PromptError
from dreamgen.guidance.base import Guidance, LoRAScore, alpha_sigma
from dreamgen.prior.io import load_prior, load_spec, weights_path
from dreamgen.prior.model import ShapesPrior, denoise, v_to_eps
from dreamgen.registry import register
from dreamgen.world.captions import parse_caption

# Every conv/linear inside the resnets and attention blocks (not conv_in/conv_out or the embeddings).
LORA_TARGETS = ["conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class ShapesGuidanceConfig:
    name: str = "shapes"
    weights: str = "v1"  # a packaged name (v1, v2, v2-pose) or a shapes_prior.safetensors path (its .json beside it)


@dataclass
class Shapes64GuidanceConfig:
    name: str = "shapes64"
    weights: str = "v2"


@dataclass
class ShapesCamGuidanceConfig:
    name: str = "shapes-cam"
    weights: str = "v2"  # the weights must have a camera input (camera_dim > 0)


def _no_camera_input(cfg) -> GuidanceLoadError:
    return GuidanceLoadError(
        f"--guidance shapes-cam needs prior weights with a camera condition, and {weights_path(_weights(cfg))} have "
        f"none (a text-only v1 prior): use the packaged v2 weights (guidance.weights=v2), train some with "
        f"`python scripts/train_prior.py --preset v2`, or use --guidance shapes")


def _weights(cfg) -> str:
    """The configured weights; "" (run folders of older versions) = the guidance's packaged default."""
    return cfg.weights or type(cfg)().weights


@register("guidance", "shapes", config=ShapesGuidanceConfig, family="prior",
          summary="embedded prior v1 (32 px, six objects), text only: the offline CPU default")
class ShapesGuidance(Guidance):
    def __init__(self, cfg: ShapesGuidanceConfig | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg or ShapesGuidanceConfig()
        self.prior = load_prior(_weights(self.cfg), device)
        spec = self.prior.spec
        self.image_size = spec.image_size
        self.latent_channels = 3
        ac = spec.make_scheduler().alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", ac.to(device), persistent=False)
        self.background = tuple(spec.background)  # what the prior's training renders were composited over

    @classmethod
    def check_prompt(cls, prompt: str, cfg: ShapesGuidanceConfig) -> None:
        """A PromptError naming an unknown word, or an object these weights were not trained on (and the guidance
        whose weights know it)."""
        shape, known = parse_caption(prompt)[1], load_spec(_weights(cfg)).shapes
        if shape not in known:
            knows = [n for n, w in (("shapes64", "v2"), ("shapes-cam", "v2"), ("shapes", "v1"))
                     if n != cfg.name and shape in load_spec(w).shapes]
            raise PromptError(f"--guidance {cfg.name} ({_weights(cfg)} weights) was not trained on the {shape}; "
                              f"it knows {', '.join(known)}"
                              + (f"; --guidance {' or '.join(knows)} knows it" if knows else ""))

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,H,W,3] in [0,1] -> x [B,3,S,S] in [-1,1], S the prior's size (bilinear resize, antialiased when
        shrinking, differentiable; 32-px renders are upsampled for a 64-px prior)."""
        x = rgb.permute(0, 3, 1, 2)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """x [B,3,S,S] -> rgb [B,S,S,3] in [0,1]."""
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> [N, emb_dim] (the prior's layout, null camera); "" is the learned null condition."""
        return self.prior.encode_text(prompts)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        v = self.prior(x_t, t, text_emb)
        return v_to_eps(v, x_t, *alpha_sigma(self.alphas_cumprod, t, x_t))

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> "ShapesLoRAScore":
        return ShapesLoRAScore(copy.deepcopy(self.prior), self.alphas_cumprod, lora_rank, camera_dim)


@register("guidance", "shapes64", config=Shapes64GuidanceConfig, family="prior", overlay="prior-64px",
          summary="the 64-px prior v2, text only (eight objects; the Janus-prone setting)")
class Shapes64Guidance(ShapesGuidance):
    """``shapes`` on the v2 weights (a name of its own, so that its profile overlay sets 64-px renders)."""

    def __init__(self, cfg: Shapes64GuidanceConfig | None = None, device: str | torch.device = "cpu"):
        super().__init__(cfg or Shapes64GuidanceConfig(), device)


@register("guidance", "shapes-cam", config=ShapesCamGuidanceConfig, family="prior", overlay="prior-64px",
          summary="the embedded prior told each render's camera (v2 weights; against the Janus artefact)")
class ShapesCamGuidance(ShapesGuidance):
    """The embedded prior conditioned on the camera of each render: :meth:`condition` writes the camera (relative
    to the object's front, which faces +x) into the embeddings; everything else is ``shapes``."""

    def __init__(self, cfg: ShapesCamGuidanceConfig | None = None, device: str | torch.device = "cpu"):
        super().__init__(cfg or ShapesCamGuidanceConfig(), device)
        if not self.prior.spec.camera_dim:
            raise _no_camera_input(self.cfg)

    @classmethod
    def check_prompt(cls, prompt: str, cfg: ShapesCamGuidanceConfig) -> None:
        """As ``shapes``, and the weights must take a camera (checked from their spec, before they load)."""
        super().check_prompt(prompt, cfg)
        if not load_spec(_weights(cfg)).camera_dim:
            raise _no_camera_input(cfg)

    def condition(self, emb: Tensor, cameras: Cameras) -> Tensor:
        """emb [k·B, emb_dim] (rows particle-major) and B cameras -> the same rows with their camera fused."""
        n, b = emb.shape[0], len(cameras)
        if n % b:
            raise ValueError(f"{n} embedding rows for {b} cameras: expected the cameras tiled a whole number of times")
        feats = self.prior.camera_features(cameras.azimuth, cameras.elevation, cameras.distance)  # [B,camera_dim]
        return self.prior.fuse_camera(emb, feats.repeat(n // b, 1))


class ShapesLoRAScore(LoRAScore):
    """ε_ψ(x_t, t, y, c): a frozen copy of the prior + peft LoRA on its UNet's resnet/attention layers + a camera MLP
    whose output is added to the prior's conditioning vector (text, and the prior's own camera for v2 embeddings).

    The camera MLP's last layer and the LoRA B matrices start at zero, so ε_ψ equals the frozen prior's ε at
    initialisation for every camera. As in the Stable Diffusion score, the prior (UNet included) is not a registered
    submodule, so ``state_dict`` holds only the trainable LoRA and camera weights.
    """

    def __init__(self, prior: ShapesPrior, alphas_cumprod: Tensor, lora_rank: int, camera_dim: int):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        prior.requires_grad_(False).eval()
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS),
                                prior.unet)
        self.adopt_unet(prior.unet, alphas_cumprod, camera_dim)
        self._prior = (prior,)  # hidden from registration, like the UNet: frozen, never checkpointed
        self.lora_layers.requires_grad_(True)
        cond_dim = prior.spec.cond_dim
        self.camera_mlp = nn.Sequential(nn.Linear(camera_dim, cond_dim), nn.SiLU(),
                                        nn.Linear(cond_dim, cond_dim)).to(alphas_cumprod.device)
        nn.init.zeros_(self.camera_mlp[2].weight)
        nn.init.zeros_(self.camera_mlp[2].bias)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B,3,S,S], t [B], text_emb [B,emb_dim], camera [B,camera_dim] or None (null camera) -> ε."""
        prior = self._prior[0]
        cond = prior.condition(text_emb) + self.camera_mlp(self.camera_or_null(camera, x_t))
        v = denoise(self.unet, prior.spec.patch, x_t, t, cond)
        return v_to_eps(v, x_t, *alpha_sigma(self.alphas_cumprod, t, x_t))
