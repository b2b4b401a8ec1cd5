"""The guidance interface every distillation loss talks to.

A guidance wraps a frozen ε-prediction denoiser and nothing else: the encoder from renders to its space (VAE latents
for Stable Diffusion, identity-like for a pixel-space prior), its text encoder, and its noise schedule. Losses never
touch diffusers objects directly, so every loss works with every guidance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dreamgen.cameras import Cameras


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """The noise schedule at timesteps t: (a_t, s_t) = (√ᾱ_t, √(1 − ᾱ_t)), so that x_t = a_t·x + s_t·ε.

    alphas_cumprod: [T] ᾱ; t: [B] long; like: [B,...] -> each [B,1,...,1] (broadcasts against ``like``), in its dtype.
    """
    ab = alphas_cumprod.to(t.device)[t].reshape(-1, *([1] * (like.dim() - 1)))
    return ab.sqrt().to(like.dtype), (1 - ab).sqrt().to(like.dtype)


class Guidance(nn.Module):
    """Frozen text-conditioned denoiser.

    Attributes set by subclasses:
        alphas_cumprod: [T] float32 tensor on the guidance's device (ᾱ_t of the training schedule).
        image_size: side of the square RGB images ``encode_images`` expects (renders are resized to it).
        latent_channels: C of the space the losses work in.
    """

    alphas_cumprod: Tensor
    image_size: int
    latent_channels: int

    @classmethod
    def check_prompt(cls, prompt: str, cfg: Any) -> None:
        """Raise :class:`dreamgen.errors.PromptError` for a prompt this guidance (configured by ``cfg``) can never
        encode; checked when the config is composed, before any weights load. Open-vocabulary models accept
        everything."""

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def encode_images(self, rgb: Tensor) -> Tensor:
        """rgb: [B,H,W,3] in [0,1] -> x: [B,C,h,w], differentiable w.r.t. rgb."""
        raise NotImplementedError

    def decode(self, x: Tensor) -> Tensor:
        """x: [B,C,h,w] -> rgb: [B,H,W,3] in [0,1] (for previews and pixel-space losses)."""
        raise NotImplementedError

    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> embeddings [N, ...]; batch-first so that rows can be indexed and concatenated.

        Raises :class:`dreamgen.errors.PromptError` for prompts the model cannot encode.
        """
        raise NotImplementedError

    def condition(self, emb: Tensor, cameras: "Cameras") -> Tensor:
        """Embeddings for renders seen by ``cameras``: emb [N,...] with N = k·len(cameras), rows particle-major (the
        cameras tiled k times, like ``LossInput.x``) -> [N,...], the layout ``encode_text`` returns.

        The identity for text-only guidance. A camera-conditioned one (``shapes-cam``) writes each row's camera into
        its embedding. Apply it to the unconditional rows as well as the conditional ones, so that classifier-free
        guidance's direction stays the text.
        """
        return emb

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        """ε-prediction. x_t: [B,C,h,w], t: [B] long in [0,T), text_emb: [B,...] -> eps: [B,C,h,w].

        Models trained with v- or x0-prediction convert to ε here, so callers see one parameterisation.
        """
        raise NotImplementedError

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> "TrainableScore":
        """A LoRA copy of the denoiser with a camera embedding, for VSD/ESD/ASD's particle score ε_ψ."""
        raise NotImplementedError(f"{type(self).__name__} does not provide a trainable copy")


class TrainableScore(nn.Module):
    """ε_ψ(x_t, t, y, c): a trainable (LoRA) copy of a guidance denoiser, conditioned on a camera.

    ``camera`` is [B, camera_dim] (flattened c2w) or None for the camera-free score (the null camera, i.e. zeros).
    """

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class LoRAScore(TrainableScore):
    """Plumbing shared by LoRA copies of a UNet: the adapted UNet is held outside module registration, so
    ``parameters()``/``state_dict()`` (and run checkpoints) hold only the LoRA and camera weights, never a second
    copy of the frozen network. Consequence: ``.to()`` does not move the UNet; it is built on its final device."""

    def adopt_unet(self, unet: nn.Module, alphas_cumprod: Tensor, camera_dim: int) -> None:
        """Register the LoRA layers peft injected into ``unet`` as this module's trainable state."""
        from peft.tuners.lora import LoraLayer

        self.lora_layers = nn.ModuleDict({
            name.replace(".", "/"): nn.ModuleDict({"A": m.lora_A, "B": m.lora_B})
            for name, m in unet.named_modules() if isinstance(m, LoraLayer)})
        unet.eval()
        self._unet = (unet,)  # a tuple hides it from nn.Module registration
        self.camera_dim = camera_dim
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    @property
    def unet(self) -> nn.Module:
        return self._unet[0]

    def camera_or_null(self, camera: Tensor | None, x_t: Tensor) -> Tensor:
        """[B,camera_dim]; the null camera (zeros) when ``camera`` is None."""
        if camera is None:
            return torch.zeros(x_t.shape[0], self.camera_dim, device=x_t.device)
        return camera.float()
