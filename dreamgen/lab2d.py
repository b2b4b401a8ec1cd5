"""The 2-D exact-score lab: every registered distillation loss, driven against a target whose perturbed score is exact.

The "guidance" lives in R² (x is [B,2,1,1]) and its ε-prediction is the exact one of its data distribution under the
diffusers ``scaled_linear`` DDPM schedule (the same as ``GaussianGuidance``), ᾱ_t, a_t = √ᾱ_t, s_t = √(1 − ᾱ_t):

    Gaussian N(m, Σ):            ε̂(x_t) = s_t·(a_t²Σ + s_t²I)⁻¹(x_t − a_t·m)
    mixture Σ_k π_k N(m_k, Σ_k): ε̂(x_t) = Σ_k r_k(x_t)·ε̂_k(x_t),  r_k = posterior of component k at x_t

Prompts: ``TARGET_PROMPT`` → the target; "" and every other text (the negative prompts of CSD/NFSD/BSD/CFD) → the
uninformative N(0, UNCOND_STD²·I), since a 2-D point has no notion of "blurry". With ω = 1 (the lab's default)
E_ω = e_y, the pure conditional score, and the unconditional branch only matters to losses built on dC = e_y − e_0.

Two settings, i.e. two views of what the optimised parameters θ render:

- ``particles`` (ProlificDreamer's view): θ = n points, q = their empirical distribution. The particle score ε_ψ that
  VSD/ESD/ASD learn is given exactly, as the score of q_t(x_t) = mean_j N(a_t·θ_j, s_t²I) — what an ideal LoRA would
  learn — or, with ``score="mlp"``, learnt by a small MLP trained by the loss's own LoRA step.
- ``camera`` (ESD's view, closest to 3-D): x = g(θ, c) = m + B·c, θ = (m, B), a random camera c ~ N(0, I₂) per
  sample. ``LossInput.camera`` is [c, 1]: the trailing 1 flags a real camera, so the losses' null camera (zeros) is
  told apart. Camera-conditioned score: that of q(x_t | c) = N(a_t·g(θ, c), s_t²I) (a point mass, so VSD is SDS here);
  camera-free score: that of the marginal q(x_t) = N(a_t·m, a_t²BBᵀ + s_t²I).

θ is optimised by Adam on the surrogate loss of the registered loss class itself (``registry.lookup("loss", name)``);
nothing of the losses is re-implemented here. Every loss runs with the lab's ω, w = s_t² and t ∈ [0.02, 0.98] of T
(``LAB_LOSS_DEFAULTS``); its other settings are its own defaults unless ``loss_overrides`` changes them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from dreamgen import registry
from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.guidance.base import Guidance, TrainableScore
from dreamgen.losses.base import LossInput

SETTINGS = ("particles", "camera")
TARGETS = ("gaussian", "mixture")
SCORES = ("exact", "mlp")
TARGET_PROMPT = "target"
UNCOND_STD = 3.0
CAMERA_DIM = 3  # [c₁, c₂, 1]
INIT_MEAN = (-1.5, 2.0)  # θ starts as N(INIT_MEAN, INIT_STD²I) (particles) or m = INIT_MEAN, B = INIT_STD·I (camera)
INIT_STD = 0.5
LAB_LOSS_DEFAULTS = {"weighting": "sds", "t_min": 0.02, "t_max": 0.98}  # plus guidance_scale = the lab's ω
MLP_LOSS_DEFAULTS = {"lora_lr": 1e-3}  # the MLP score learns at this rate unless overridden


# ---- distributions with an exact perturbed score ---------------------------------------------------------------------

def _inv2(m: Tensor) -> tuple[Tensor, Tensor]:
    """[...,2,2] -> (inverse [...,2,2], determinant [...])."""
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    adj = torch.stack([torch.stack([m[..., 1, 1], -m[..., 0, 1]], -1),
                       torch.stack([-m[..., 1, 0], m[..., 0, 0]], -1)], -2)
    return adj / det[..., None, None], det


@dataclass
class Mixture2D:
    """Σ_k π_k N(m_k, Σ_k) in R²; a Gaussian is K = 1, an empirical distribution has Σ_k = 0."""

    weights: Tensor  # [K], sums to 1
    means: Tensor  # [K,2]
    covs: Tensor  # [K,2,2]

    @classmethod
    def gaussian(cls, mean: Tensor, cov: Tensor) -> "Mixture2D":
        return cls(mean.new_ones(1), mean.reshape(1, 2), cov.reshape(1, 2, 2))

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """[2,2] covariance of the whole mixture."""
        d = self.means - self.mean
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def eps(self, x_t: Tensor, a: Tensor, s: Tensor) -> Tensor:
        """Exact ε-prediction of the perturbed mixture. x_t: [B,2], a, s: [B,1] -> [B,2] (computed in float64)."""
        x_t, a, s = x_t.double(), a.double()[:, :, None], s.double()[:, :, None]
        means, covs = self.means.double(), self.covs.double()
        cov_t = a[..., None] ** 2 * covs + s[..., None] ** 2 * torch.eye(2, dtype=torch.float64)  # [B,K,2,2]
        inv, det = _inv2(cov_t)
        diff = x_t[:, None, :] - a * means  # [B,K,2]
        u = (inv @ diff[..., None]).squeeze(-1)  # Σ_t⁻¹(x_t − a·m_k)
        logp = self.weights.double().log() - 0.5 * (diff * u).sum(-1) - 0.5 * det.log()  # [B,K]
        r = torch.softmax(logp, dim=1)
        return (s[:, 0] * (r[..., None] * u).sum(1)).float()

    def sample(self, n: int, gen: torch.Generator) -> Tensor:
        """[n,2] samples."""
        k = torch.multinomial(self.weights.float(), n, replacement=True, generator=gen)
        chol = torch.linalg.cholesky(self.covs + 1e-12 * torch.eye(2))
        z = torch.randn(n, 2, generator=gen)
        return self.means[k] + (chol[k] @ z[..., None]).squeeze(-1)

    def modes_covered(self, pts: Tensor, radius: float = 3.0, share: float = 0.5) -> float:
        """Fraction of components holding ≥ ``share``·π_k of ``pts`` [N,2] within Mahalanobis distance ``radius``."""
        inv, _ = _inv2(self.covs)
        d = pts[:, None, :] - self.means  # [N,K,2]
        maha2 = (d * (inv @ d[..., None]).squeeze(-1)).sum(-1)
        inside = (maha2 <= radius**2).float().mean(0)  # [K]
        return (inside >= share * self.weights).float().mean().item()


def make_target(name: str) -> Mixture2D:
    """``gaussian``: N([0.5, 0.5], AAᵀ), A = [[1.5, 0], [1, 0.8]] (eigenvalues 3.48, 0.41); ``mixture``: 6 equal modes N(·, 0.25²I) on a
    hexagon of radius 2 around [0.5, 0.5]."""
    centre = torch.tensor([0.5, 0.5])
    if name == "gaussian":
        a = torch.tensor([[1.5, 0.0], [1.0, 0.8]])
        return Mixture2D.gaussian(centre, a @ a.T)
    if name == "mixture":
        ang = torch.arange(6) * (2 * math.pi / 6)
        means = centre + 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
        return Mixture2D(torch.full((6,), 1 / 6), means, 0.25**2 * torch.eye(2).expand(6, 2, 2).clone())
    raise ConfigError(f"unknown lab target {name!r}; valid: {', '.join(TARGETS)}")


def _scaled_linear_alphas() -> Tensor:
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return sched.alphas_cumprod.float().clone()


def _a_s(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """[B] long -> (a_t, s_t), each [B,1]."""
    ab = alphas_cumprod[t][:, None]
    return ab.sqrt(), (1 - ab).sqrt()


def esd_camera_trace_ratio(lambda_entropy: float, target: Mixture2D, t_min: float = 0.02,
                           t_max: float = 0.98) -> float:
    """Predicted stationary trace ratio of ESD in the camera setting (Gaussian target, w = s_t², t uniform).

    With x = m + B·c, E[g·cᵀ] = E_t[s³a·((a²Σ + s²I)⁻¹ − λ·(a²BBᵀ + s²I)⁻¹)]·B: along each eigen-direction of Σ
    (variance σ²) the generator's variance b² stops where λ·E_t[s³a/(a²b² + s²)] = E_t[s³a/(a²σ² + s²)], and
    collapses (b = 0) when even b = 0 gives λ·E_t[s·a] ≤ E_t[s³a/(a²σ² + s²)]. λ = 1 gives b² = σ²; λ = 0 (VSD)
    always collapses.
    """
    ab = _scaled_linear_alphas().double()
    t = torch.arange(int(1000 * t_min), int(1000 * t_max) + 1)
    a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
    w = s**3 * a
    variances = torch.linalg.eigvalsh(target.cov.double())
    fitted = 0.0
    for var in variances.tolist():
        need = (w / (a**2 * var + s**2)).mean()
        pull = lambda b2: lambda_entropy * (w / (a**2 * b2 + s**2)).mean()  # noqa: E731
        if pull(0.0) <= need:
            continue
        lo, hi = 0.0, 100.0 * var
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if pull(mid) > need else (lo, mid)
        fitted += lo
    return fitted / variances.sum().item()


# ---- what θ renders, and the exact score of its distribution -------------------------------------------------------

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
        a, s = _a_s(self._alphas_cumprod, t)
        return self._score_eps(x_t.reshape(-1, 2), a, s, camera).reshape(x_t.shape)


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
        self.register_buffer("alphas_cumprod", _scaled_linear_alphas(), persistent=False)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """[N,1]: 1 for the target prompt, 0 (uninformative) for any other text."""
        return torch.tensor([[1.0 if p == TARGET_PROMPT else 0.0] for p in prompts])

    def encode_images(self, rgb: Tensor) -> Tensor:
        return rgb.permute(0, 3, 1, 2)

    def decode(self, x: Tensor) -> Tensor:
        """[B,2,1,1] -> [B,1,1,2]: the point itself, channels last (there is no image)."""
        return x.permute(0, 2, 3, 1)

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        a, s = _a_s(self.alphas_cumprod, t)
        pts = x_t.reshape(-1, 2)
        e_target, e_uncond = self.target.eps(pts, a, s), self.uncond.eps(pts, a, s)
        return torch.where(text_emb.reshape(-1, 1) > 0.5, e_target, e_uncond).reshape(x_t.shape)

    def trainable_copy(self, lora_rank: int, camera_dim: int = 16) -> TrainableScore:
        if self.score == "mlp":
            return MLPParticleScore(lora_rank, camera_dim, self.num_train_timesteps)
        return ExactParticleScore(self._model[0], self.alphas_cumprod)


# ---- one run -------------------------------------------------------------------------------------------------------

@dataclass
class LabResult:
    loss: str
    setting: str
    target: str
    steps: int
    overrides: dict[str, Any]
    trace_ratio: float  # tr Cov(q) / tr Cov(p)
    mean_error: float  # ‖E_q[x] − E_p[x]‖
    modes_covered: float | None  # mixture target only
    sec_per_step: float
    fitted: Tensor  # [N,2] samples of the fitted q
    target_samples: Tensor  # [N,2] samples of p

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.loss} ({extra})" if extra else self.loss


@dataclass
class LabSkip:
    loss: str
    setting: str
    target: str
    overrides: dict[str, Any]
    reason: str

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.loss} ({extra})" if extra else self.loss


def _loss_config(entry, loss_overrides: dict[str, Any], guidance_scale: float, score: str):
    names = {f.name for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(loss_overrides) - names)
    if unknown:
        raise ConfigError(f"loss {entry.name!r} has no option {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    values = {**LAB_LOSS_DEFAULTS, "guidance_scale": guidance_scale, "camera_dim": CAMERA_DIM}
    if score == "mlp":
        values.update(MLP_LOSS_DEFAULTS)
    values.update(loss_overrides)
    return entry.config(**{k: v for k, v in values.items() if k in names})


def initial_model(setting: str, n_particles: int, gen: torch.Generator) -> nn.Module:
    mean = torch.tensor(INIT_MEAN)
    if setting == "particles":
        return ParticleCloud(mean + INIT_STD * torch.randn(n_particles, 2, generator=gen))
    if setting == "camera":
        return CameraGenerator(mean, INIT_STD * torch.eye(2))
    raise ConfigError(f"unknown lab setting {setting!r}; valid: {', '.join(SETTINGS)}")


def run_lab(loss_name: str, setting: str = "particles", target: str = "gaussian", steps: int = 3000,
            lr: float = 1e-2, seed: int = 0, n_particles: int = 256, loss_overrides: dict[str, Any] | None = None,
            guidance_scale: float = 1.0, score: str = "exact", eval_samples: int = 2048) -> LabResult:
    """Fit θ to the target with the registered loss ``loss_name``; metrics on the fitted distribution.

    ``n_particles``: the number of points (particles) or of cameras drawn per step (camera). Raises DreamgenError
    (ConfigError...) for losses that need inputs the lab cannot give (DDS's source, RSD's ≥ 3 particles).
    """
    overrides = dict(loss_overrides or {})
    entry = registry.lookup("loss", loss_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: a thread pool costs more than it gives, badly on a busy CPU
    try:
        return _run(entry, setting, target, steps, lr, seed, n_particles, overrides, guidance_scale, score,
                    eval_samples)
    finally:
        torch.set_num_threads(threads)


def _run(entry, setting, target, steps, lr, seed, n_particles, overrides, guidance_scale, score,
         eval_samples) -> LabResult:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p = make_target(target)
    model = initial_model(setting, n_particles, gen)
    guidance = Lab2DGuidance(p, model, score)
    loss = entry.cls(_loss_config(entry, overrides, guidance_scale, score), guidance)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cond, uncond = guidance.encode_text([TARGET_PROMPT]), guidance.encode_text([""])

    t0 = time.perf_counter()
    for step in range(steps):
        x, camera = model.render(n_particles)
        b = x.shape[0]
        inp = LossInput(x=x.reshape(b, 2, 1, 1), cond=cond.expand(b, 1), uncond=uncond.expand(b, 1), step=step,
                        total_steps=steps, camera=camera, n_particles=model.n_particles)
        out = loss(inp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    sec = (time.perf_counter() - t0) / max(steps, 1)

    eval_gen = torch.Generator().manual_seed(seed + 1)
    fitted = model.samples(eval_samples, eval_gen)
    q_mean, q_cov = fitted.mean(0), torch.cov(fitted.T)
    return LabResult(
        loss=entry.name, setting=setting, target=target, steps=steps, overrides=overrides,
        trace_ratio=(q_cov.trace() / p.cov.trace()).item(), mean_error=(q_mean - p.mean).norm().item(),
        modes_covered=p.modes_covered(fitted) if target == "mixture" else None, sec_per_step=sec,
        fitted=fitted, target_samples=p.sample(eval_samples, eval_gen))


# ---- the table and its report -------------------------------------------------------------------------------------

VARIANTS: dict[str, list[dict[str, Any]]] = {"esd": [{}, {"lambda_entropy": 0.75}, {"lambda_entropy": 1.0}],
                                            "rsd": [{}, {"gamma": 1.0}]}  # extra rows for some losses


def main_table(losses: Sequence[str] | None = None, settings: Sequence[str] = SETTINGS,
               targets: Sequence[str] = TARGETS, steps: int = 1500, lr: float = 1e-2, seed: int = 0,
               n_particles: int = 256, guidance_scale: float = 1.0, progress=None) -> list[LabResult | LabSkip]:
    """Every registered loss (or ``losses``) × settings × targets, plus the ``VARIANTS`` rows; a loss that raises a
    DreamgenError on its first step becomes a ``LabSkip`` with the message as its reason."""
    names = list(losses) if losses is not None else sorted(registry.entries("loss"))
    rows: list[LabResult | LabSkip] = []
    for target in targets:
        for setting in settings:
            for name in names:
                for ov in VARIANTS.get(name, [{}]):
                    try:
                        row = run_lab(name, setting, target, steps, lr, seed, n_particles, ov, guidance_scale)
                    except DreamgenError as e:
                        row = LabSkip(name, setting, target, ov, str(e))
                    if progress is not None:
                        progress(row)
                    rows.append(row)
    return rows


def format_result(r: LabResult | LabSkip) -> str:
    """One line for the terminal."""
    if isinstance(r, LabSkip):
        return f"{r.label:<28} {r.setting:<9} {r.target:<8} skipped: {r.reason}"
    modes = "" if r.modes_covered is None else f"  modes {r.modes_covered:.2f}"
    return (f"{r.label:<28} {r.setting:<9} {r.target:<8} trace ratio {r.trace_ratio:6.3f}  "
            f"mean error {r.mean_error:6.3f}{modes}  {1e3 * r.sec_per_step:6.1f} ms/step")


def plot_name(r: LabResult) -> str:
    tag = "-".join(f"{k}{v}" for k, v in r.overrides.items())
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(filter(None, [r.loss, tag, r.setting, r.target]))) + ".png"


def save_scatter(r: LabResult, path: Path, size: int = 360) -> Path:
    """Target samples (blue) and fitted samples (orange) as a PNG, drawn with PIL."""
    from PIL import Image, ImageDraw

    pts = torch.cat([r.target_samples, r.fitted])
    pts = pts[torch.isfinite(pts).all(1)]
    lo, hi = pts.quantile(0.005, 0).floor() - 0.5, pts.quantile(0.995, 0).ceil() + 0.5
    span = float((hi - lo).max())
    lo = (lo + hi) / 2 - span / 2
    pad, top = 24, 22
    inner = size - 2 * pad

    def xy(p: Tensor) -> tuple[float, float]:
        u = (p - lo) / span
        return pad + float(u[0]) * inner, top + (1 - float(u[1])) * inner

    img = Image.new("RGB", (size, size + top - pad // 2), "white")
    d = ImageDraw.Draw(img)
    tick = min(m * 10**e for e in range(-1, 4) for m in (1, 2, 5) if span / (m * 10**e) <= 10)
    for k in range(math.ceil(span / tick) + 2):
        for axis in (0, 1):
            v = (math.floor(float(lo[axis]) / tick) + k) * tick
            f = (v - float(lo[axis])) / span
            if 0 <= f <= 1:
                if axis == 0:
                    x0 = pad + f * inner
                    d.line([(x0, top), (x0, top + inner)], fill=(225, 225, 225))
                    d.text((x0 - 3, top + inner + 2), f"{v:g}", fill=(90, 90, 90))
                else:
                    y0 = top + (1 - f) * inner
                    d.line([(pad, y0), (pad + inner, y0)], fill=(225, 225, 225))
                    d.text((2, y0 - 5), f"{v:g}", fill=(90, 90, 90))
    for pts_, colour in ((r.target_samples, (31, 119, 180)), (r.fitted, (255, 127, 14))):
        for p in pts_[torch.isfinite(pts_).all(1)]:
            x, y = xy(p)
            if not (pad <= x <= pad + inner and top <= y <= top + inner):
                continue
            d.ellipse([x - 1.6, y - 1.6, x + 1.6, y + 1.6], fill=colour)
    d.rectangle([pad, top, pad + inner, top + inner], outline=(120, 120, 120))
    d.text((pad, 4), f"{r.label} | {r.setting} | {r.target} | trace ratio {r.trace_ratio:.3f}", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


TABLE_BEGIN, TABLE_END = "<!-- lab2d-table:begin -->", "<!-- lab2d-table:end -->"


def markdown_table(rows: Sequence[LabResult | LabSkip], plot_dir: str | None = None) -> str:
    """A markdown table, one row per run; ``plot_dir`` (relative to the markdown file) links each scatter plot."""
    lines = ["| loss | setting | target | trace ratio | mean error | modes covered | ms / step | plot |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if isinstance(r, LabSkip):
            lines.append(f"| {r.label} | {r.setting} | {r.target} | — | — | — | — | skipped: {r.reason} |")
            continue
        modes = "—" if r.modes_covered is None else f"{r.modes_covered:.2f}"
        plot = f"[png]({plot_dir}/{plot_name(r)})" if plot_dir is not None else ""
        lines.append(f"| {r.label} | {r.setting} | {r.target} | {r.trace_ratio:.3f} | {r.mean_error:.3f} | "
                     f"{modes} | {1e3 * r.sec_per_step:.1f} | {plot} |")
    return "\n".join(lines)


def write_report(rows: Sequence[LabResult | LabSkip], markdown: Path, plot_dir: Path, note: str = "") -> Path:
    """Scatter PNGs into ``plot_dir``; the table into ``markdown`` between the lab2d-table markers (the rest of the
    file, the hand-written discussion, is kept), or a new file holding only the table."""
    for r in rows:
        if isinstance(r, LabResult):
            save_scatter(r, plot_dir / plot_name(r))
    try:
        rel = plot_dir.resolve().relative_to(markdown.resolve().parent).as_posix()
    except ValueError:
        rel = plot_dir.resolve().as_posix()
    block = f"{TABLE_BEGIN}\n{note}\n\n{markdown_table(rows, rel)}\n{TABLE_END}" if note else \
        f"{TABLE_BEGIN}\n{markdown_table(rows, rel)}\n{TABLE_END}"
    text = markdown.read_text() if markdown.exists() else ""
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = (text + "\n\n" if text else "# 2-D exact-score lab\n\n") + block + "\n"
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text)
    return markdown
