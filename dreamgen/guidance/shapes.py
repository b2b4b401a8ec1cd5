"""The embedded prior (``--guidance shapes``): a 32×32 pixel-space diffusion model of the procedural world.

It runs offline on a CPU from package data (``dreamgen/assets/shapes_prior.{safetensors,json}``, trained by
``scripts/train_prior.py``). Its space is RGB in [-1,1] at 32×32, so ``encode_images`` is a differentiable
antialiased resize. Prompts are world captions ("a red cube", "a red cube, front view"); words outside the world's
vocabulary are a :class:`PromptError`. The model predicts v; ``predict_noise`` returns ε = a_t·v + s_t·x_t.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.guidance.base import Guidance, LoRAScore, alpha_sigma
from dreamgen.prior.io import load_prior
from dreamgen.prior.model import denoise, v_to_eps
from dreamgen.registry import register

# Every conv/linear inside the resnets and attention blocks (not conv_in/conv_out or the embeddings).
LORA_TARGETS = ["conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class ShapesGuidanceConfig:
    name: str = "shapes"
    weights: str = ""  # shapes_prior.safetensors path (its .json beside it); "" = the packaged weights


@register("guidance", "shapes", config=ShapesGuidanceConfig,
          summary="embedded 32×32 prior of the procedural world (offline, CPU; colours × shapes × views)")
class ShapesGuidance(Guidance):
    def __init__(self, cfg: ShapesGuidanceConfig | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg or ShapesGuidanceConfig()
        self.prior = load_prior(self.cfg.weights, device)
        spec = self.prior.spec
        self.image_size = spec.image_size
        self.latent_channels = 3
        ac = spec.make_scheduler().alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", ac.to(device), persistent=False)
        self.background = tuple(spec.background)  # what the prior's training renders were composited over

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb [B,H,W,3] in [0,1] -> x [B,3,32,32] in [-1,1] (antialiased bilinear resize, differentiable)."""
        x = rgb.permute(0, 3, 1, 2)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        """x [B,3,32,32] -> rgb [B,32,32,3] in [0,1]."""
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> [N, cond_dim]; "" is the learned null condition."""
        return self.prior.encode_text(prompts)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        v = self.prior(x_t, t, text_emb)
        return v_to_eps(v, x_t, *alpha_sigma(self.alphas_cumprod, t, x_t))

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> "ShapesLoRAScore":
        return ShapesLoRAScore(copy.deepcopy(self.prior.unet), self.prior.spec.patch, self.alphas_cumprod,
                               lora_rank, camera_dim)


class ShapesLoRAScore(LoRAScore):
    """ε_ψ(x_t, t, y, c): a frozen copy of the prior's UNet + peft LoRA on its resnet/attention layers + a camera MLP
    whose output is added to the text condition.

    The camera MLP's last layer and the LoRA B matrices start at zero, so ε_ψ equals the frozen prior's ε at
    initialisation for every camera. As in the Stable Diffusion score, the UNet is not a registered submodule, so
    ``state_dict`` holds only the trainable LoRA and camera weights.
    """

    def __init__(self, unet: nn.Module, patch: int, alphas_cumprod: Tensor, lora_rank: int, camera_dim: int):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        unet.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS), unet)
        self.adopt_unet(unet, alphas_cumprod, camera_dim)
        self.lora_layers.requires_grad_(True)
        cond_dim = unet.time_embedding.linear_2.out_features
        self.camera_mlp = nn.Sequential(nn.Linear(camera_dim, cond_dim), nn.SiLU(),
                                        nn.Linear(cond_dim, cond_dim)).to(alphas_cumprod.device)
        nn.init.zeros_(self.camera_mlp[2].weight)
        nn.init.zeros_(self.camera_mlp[2].bias)
        self.patch = patch

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        """x_t [B,3,32,32], t [B], text_emb [B,cond_dim], camera [B,camera_dim] or None (null camera) -> ε."""
        cond = text_emb + self.camera_mlp(self.camera_or_null(camera, x_t))
        v = denoise(self.unet, self.patch, x_t, t, cond)
        return v_to_eps(v, x_t, *alpha_sigma(self.alphas_cumprod, t, x_t))
