"""What the lab's parameters θ render (a particle cloud, or a camera-conditioned generator), the exact score of the
rendered distribution (the particle score VSD/ESD/ASD would learn), and the exact 2-D guidance the losses talk to."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamgen.errors import ConfigError
from dreamgen.guidance.base import Guidance, TrainableScore, alpha_sigma
from dreamgen.lab2d.targets import UNCOND_STD, Mixture2D, scaled_linear_alphas

SCORES = ("exact", "mlp")
TARGET_PROMPT = "target"
CAMERA_DIM = 3  # [c₁, c₂, 1]


class ParticleCloud(nn.Module):
    """θ = n points [n,2]; every step renders all of them (B = n, one row per particle)."""

    camera_dim = 0

    def __init__(self, init: Tensor):
        super().__init__()
        self.theta = nn.Parameter(init.clone())

    @property
    def n_particles(self) -> int:
        return self.theta.shape[0]

    def render(self, batch: int) -> tuple[Tensor, None]:
        return self.theta, None

    @torch.no_grad()
    def score_eps(self, x_t: Tensor, a: Tensor, s: Tensor, camera: Tensor | None) -> Tensor:
        """ε of the perturbed empirical distribution q_t = mean_j N(a·θ_j, s²I) (the camera is ignored):
        (x_t − a·Σ_j r_j θ_j)/s with r_j ∝ exp(−‖x_t − a·θ_j‖²/2s²) the posterior of particle j."""
        th = self.theta.detach()
        d2 = (x_t[:, None, :] - a[:, :, None] * th[None]).pow(2).sum(-1)  # [B,n]
        r = torch.softmax(-d2 / (2 * s**2), dim=1)
        return (x_t - a * (r @ th)) / s

    def samples(self, n: int, gen: torch.Generator) -> Tensor:
        return self.theta.detach().clone()


class CameraGenerator(nn.Module):
    """x = g(θ, c) = m + B·c, c ~ N(0, I₂) per sample (global RNG); the camera vector is [c, 1]."""

    camera_dim = CAMERA_DIM
    n_particles = 1

    def __init__(self, mean: Tensor, basis: Tensor):
        super().__init__()
        self.m = nn.Parameter(mean.clone())  # [2]
        self.B = nn.Parameter(basis.clone())  # [2,2]

    def render(self, batch: int) -> tuple[Tensor, Tensor]:
        c = torch.randn(batch, 2)
        return self.m + c @ self.B.T, torch.cat([c, c.new_ones(batch, 1)], 1)

    @torch.no_grad()
    def score_eps(self, x_t: Tensor, a: Tensor, s: Tensor, camera: Tensor | None) -> Tensor:
        """Rows with a camera: ε of N(a·g(θ, c), s²I), i.e. (x_t − a·g)/s; null camera: ε of the marginal."""
        m, basis = self.m.detach(), self.B.detach()
        marginal = Mixture2D.gaussian(m, basis @ basis.T).eps(x_t, a, s)
        if camera is None:
            return marginal
        point = (x_t - a * (m + camera[:, :2] @ basis.T)) / s
        return torch.where(camera[:, 2:3] > 0.5, point, marginal)

    def samples(self, n: int, gen: torch.Generator) -> Tensor:
        c = torch.randn(n, 2, generator=gen)
        return (self.m + c @ self.B.T).detach()


class ExactParticleScore(TrainableScore):
    """ε_ψ given in closed form by the current θ (no parameters, so VSD/ESD/ASD skip their LoRA step)."""

    def __init__(self, model: nn.Module, alphas_cumprod: Tensor):
        super().__init__()
        self._score_eps = model.score_eps  # a bound method: θ must not become a parameter of the loss
        self._alphas_cumprod = alphas_cumprod

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        pts = x_t.reshape(-1, 2)
        a, s = alpha_sigma(self._alphas_cumprod, t, pts)
        return self._score_eps(pts, a, s, camera).reshape(x_t.shape)


class MLPParticleScore(TrainableScore):
    """ε_ψ(x_t, t, c) = MLP([x_t, t/T, c]), learnt by the loss's own particle-score (LoRA) step; hidden 16·rank."""

    def __init__(self, lora_rank: int, camera_dim: int, T: int):
        super().__init__()
        self.T, self.camera_dim = T, camera_dim
        hidden = 16 * max(lora_rank, 1)
        self.net = nn.Sequential(nn.Linear(3 + camera_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor, camera: Tensor | None) -> Tensor:
        b = x_t.shape[0]
        if camera is None:
            camera = x_t.new_zeros(b, self.camera_dim)
        feats = torch.cat([x_t.reshape(b, 2), (t.float() / self.T)[:, None], camera.reshape(b, self.camera_dim)], 1)
        return self.net(feats).reshape(x_t.shape)


class Lab2DGuidance(Guidance):
    """The exact 2-D denoiser; ``trainable_copy`` gives the particle score of the optimised model."""

    latent_channels = 2
    image_size = 1

    def __init__(self, target: Mixture2D, model: nn.Module, score: str = "exact"):
        super().__init__()
        if score not in SCORES:
            raise ConfigError(f"unknown lab particle score {score!r}; valid: {', '.join(SCORES)}")
        self.target = target
        self.uncond = Mixture2D.gaussian(torch.zeros(2), UNCOND_STD**2 * torch.eye(2))
        self.score = score
        self._model = [model]  # in a list, so the model is not a submodule of the guidance
        self.register_buffer("alphas_cumprod", scaled_linear_alphas(), persistent=False)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """[N,1]: 1 for the target prompt, 0 (uninformative) for any other text."""
        return torch.tensor([[1.0 if p == TARGET_PROMPT else 0.0] for p in prompts])

    def encode_images(self, rgb: Tensor) -> Tensor:
        return rgb.permute(0, 3, 1, 2)

    def decode(self, x: Tensor) -> Tensor:
        """[B,2,1,1] -> [B,1,1,2]: the point itself, channels last (there is no image)."""
        return x.permute(0, 2, 3, 1)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        pts = x_t.reshape(-1, 2)
        a, s = alpha_sigma(self.alphas_cumprod, t, pts)
        e_target, e_uncond = self.target.eps(pts, a, s), self.uncond.eps(pts, a, s)
        return torch.where(text_emb.reshape(-1, 1) > 0.5, e_target, e_uncond).reshape(x_t.shape)

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> TrainableScore:
        if self.score == "mlp":
            return MLPParticleScore(lora_rank, camera_dim, self.num_train_timesteps)
        return ExactParticleScore(self._model[0], self.alphas_cumprod)
