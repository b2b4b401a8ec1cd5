"""A guidance whose denoiser is exact: the data for prompt y is N(μ_y, σ²I) in its own space.

For x0 ~ N(μ, σ²I) and x_t = a·x0 + s·eps, the optimal ε-prediction is ε̂ = s·(x_t − a·μ)/(a²σ² + s²); σ = 0 gives
the point-mass denoiser ε̂ = (x_t − a·μ)/s (under which SDS vanishes, see tests/test_loss_sds.py). The "text
embedding" of a prompt is μ_y itself, flattened, so losses can be tested against closed forms.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from dreamgen.errors import PromptError
from dreamgen.guidance.base import Guidance, TrainableScore


class GaussianGuidance(Guidance):
    def __init__(self, means: dict[str, Tensor], sigma: float = 0.0, image_size: int = 8):
        """means: prompt -> μ [C,h,w] (must include "" for the unconditional branch)."""
        super().__init__()
        if "" not in means:
            raise ValueError("means must include the empty prompt ''")
        self.means = {k: v.float() for k, v in means.items()}
        self.sigma = float(sigma)
        self.shape = tuple(next(iter(self.means.values())).shape)
        self.latent_channels = self.shape[0]
        self.image_size = image_size
        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012)
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.float().clone(), persistent=False)

    def encode_text(self, prompts: list[str]) -> Tensor:
        missing = [p for p in prompts if p not in self.means]
        if missing:
            raise PromptError(f"unknown prompt {missing[0]!r}")
        return torch.stack([self.means[p].flatten() for p in prompts]).to(self.alphas_cumprod.device)

    def encode_images(self, rgb: Tensor) -> Tensor:
        """[B,h,w,C] -> [B,C,h,w]: the identity in channels-first layout."""
        return rgb.permute(0, 3, 1, 2)

    def decode(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        mu = text_emb.reshape(x_t.shape)
        ab = self.alphas_cumprod[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return s * (x_t - a * mu) / (ab * self.sigma**2 + (1 - ab))

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> "GaussianTrainableScore":
        return GaussianTrainableScore(self, lora_rank, camera_dim)


class GaussianTrainableScore(TrainableScore):
    """ε_ψ(x_t, t, μ_y, c) = ε_exact(x_t, t; μ_y) + MLP([x_t, μ_y, t/T, c]), its last layer zero-initialised.

    At initialisation ε_ψ equals the frozen exact ε bit for bit; ``lora_rank`` sets the hidden width (16·rank),
    the stand-in for a LoRA's capacity. ``camera=None`` is the null camera (zeros).
    """

    def __init__(self, guidance: GaussianGuidance, lora_rank: int, camera_dim: int):
        super().__init__()
        self.exact_eps = guidance.predict_noise  # a bound method, so the guidance does not become a submodule
        self.T = guidance.num_train_timesteps
        self.camera_dim = camera_dim
        d = math.prod(guidance.shape)
        hidden = 16 * max(lora_rank, 1)
        dev = guidance.device
        self.hidden = nn.Sequential(nn.Linear(2 * d + 1 + camera_dim, hidden, device=dev), nn.SiLU())
        self.out = nn.Linear(hidden, d, device=dev)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        b = x_t.shape[0]
        if camera is None:
            camera = x_t.new_zeros(b, self.camera_dim)
        feats = torch.cat([x_t.reshape(b, -1), text_emb.reshape(b, -1), (t.float() / self.T)[:, None], camera], 1)
        return self.exact_eps(x_t, t, text_emb) + self.out(self.hidden(feats)).reshape(x_t.shape)
