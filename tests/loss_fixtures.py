"""The fixtures of every loss test: an exact Gaussian prior with all the prompts the tests use, its closed forms
written out independently of ``dreamgen``, inputs, the losses' random draws replayed, and the update direction g
recovered from the surrogate's gradient (∂loss/∂x = weight·g/B).

The prior (``dreamgen.testing.gaussian_guidance.GaussianGuidance``): data for prompt p is N(μ_p, σ²I) in the loss
space [C,h,w] = SHAPE, and the "text embedding" of p is μ_p flattened, so an embedding batch [B, D] reshapes to the
[B,C,h,w] means of its rows. Its ε-prediction is ε̂(x_t) = s_t·(x_t − a_t·μ)/(a_t²σ² + s_t²); σ = 0 is a point mass.
"""

from __future__ import annotations

import io
import math

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS
from dreamgen.losses.base import LossInput
from dreamgen.prompts import PromptConfig, PromptSet, view_prompt
from dreamgen.testing.gaussian_guidance import GaussianGuidance

SHAPE = (4, 5, 5)
PROMPT = "a red cube"  # the prompt of the view-dependent prompt sets (VSD/ESD/ASD, Perp-Neg)
PROMPTS = ("", "a cat", "a dog", "a cube", "blurry", "ugly", PROMPT, *(view_prompt(PROMPT, v) for v in VIEWS))


# ---- the prior and its closed forms ----------------------------------------------------------------------------------

def gaussian_guidance(sigma: float = 0.0, seed: int = 0, cls: type = GaussianGuidance) -> GaussianGuidance:
    """Data for each prompt p of PROMPTS ~ N(μ_p, σ²I), the μ_p drawn in PROMPTS order from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return cls({p: torch.randn(SHAPE, generator=gen) for p in PROMPTS}, sigma=sigma, image_size=SHAPE[1])


class Shifted(GaussianGuidance):
    """Every ε-prediction plus a constant tensor."""

    def __init__(self, base: GaussianGuidance, shift: Tensor):
        super().__init__(base.means, sigma=base.sigma, image_size=base.image_size)
        self.shift = shift

    def predict_noise(self, x_t, t, text_emb):
        return super().predict_noise(x_t, t, text_emb) + self.shift


class Counting(GaussianGuidance):
    """Counts denoiser calls (one batched call = one) and the rows they evaluate."""

    def __init__(self, base: GaussianGuidance):
        super().__init__(base.means, sigma=base.sigma, image_size=base.image_size)
        self.calls = self.rows = 0

    def predict_noise(self, x_t, t, text_emb):
        self.calls += 1
        self.rows += x_t.shape[0]
        return super().predict_noise(x_t, t, text_emb)


def mu(guidance: GaussianGuidance, prompt: str) -> Tensor:
    """μ_p, [C,h,w]."""
    return guidance.means[prompt]


def alpha_sigma(guidance: GaussianGuidance, t: Tensor) -> tuple[Tensor, Tensor]:
    """(a_t, s_t), shaped [B,1,1,1]."""
    ab = guidance.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt(), (1 - ab).sqrt()


def exact_eps(guidance: GaussianGuidance, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
    """The prior's ε-prediction s·(x_t − a·μ)/(a²σ² + s²) for x_t [B,C,h,w], t [B] and embeddings emb: [B, D] rows,
    or one μ [C,h,w] for every row."""
    a, s = alpha_sigma(guidance, t)
    means = emb.reshape(-1, *x_t.shape[1:])
    return s * (x_t - a * means) / (a**2 * guidance.sigma**2 + s**2)


def exact_cfg(guidance: GaussianGuidance, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
              scale: float) -> Tensor:
    """E_ω = e_0 + ω·(e_y − e_0) of the prior."""
    e_0 = exact_eps(guidance, x_t, t, uncond)
    return e_0 + scale * (exact_eps(guidance, x_t, t, cond) - e_0)


def perp(a: Tensor, b: Tensor) -> Tensor:
    """a − ⟨a,b⟩/‖b‖²·b, per sample."""
    coef = (a * b).flatten(1).sum(1) / (b * b).flatten(1).sum(1)
    return a - coef.reshape(-1, *([1] * (a.dim() - 1))) * b


def exact_perp_neg_cond(guidance: GaussianGuidance, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor,
                        perp_neg) -> Tensor:
    """Perp-Neg's conditional prediction e_y + Σ_k w_k·perp(e_neg_k − e_0, e_y − e_0) of the prior."""
    e_y, e_0 = exact_eps(guidance, x_t, t, cond), exact_eps(guidance, x_t, t, uncond)
    out = e_y
    for k in range(perp_neg.weights.shape[1]):
        e_neg = exact_eps(guidance, x_t, t, perp_neg.negatives[:, k])
        out = out + perp_neg.weights[:, k].reshape(-1, 1, 1, 1) * perp(e_neg - e_0, e_y - e_0)
    return out


def fixed_t(t: int) -> dict:
    """Config fields that pin t (as a fraction of T = 1000)."""
    return {"t_min": (t + 0.5) / 1000, "t_max": (t + 0.5) / 1000}


def svgd_repulsion(f: Tensor) -> Tensor:
    """RSD's repulsion Σ_{j≠i} (2/h_i)·k_ij·(f_i − f_j) / Σ_{j≠i} k_ij of N feature rows f [N, D], with loops,
    k_ij = exp(−‖f_i − f_j‖²/h_i), h_i = median_{j≠i}‖f_i − f_j‖² / log(N − 1)."""
    n = f.shape[0]
    out = torch.zeros_like(f)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        d2 = torch.stack([((f[i] - f[j]) ** 2).sum() for j in others])
        h = d2.median() / math.log(n - 1)
        k = torch.exp(-d2 / h)
        out[i] = sum(2 / h * k[m] * (f[i] - f[j]) for m, j in enumerate(others)) / k.sum()
    return out


# ---- inputs, runs and replays ----------------------------------------------------------------------------------------

def loss_input(guidance: GaussianGuidance, b: int = 3, prompt: str = "a cube", seed: int = 1, **kw) -> LossInput:
    """x [b, *SHAPE] ~ N(0, I) from ``seed``, requiring grad; cond = ``prompt``, uncond = ""."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *SHAPE, generator=gen).requires_grad_(True)
    return LossInput(x=x, cond=guidance.encode_text([prompt] * b), uncond=guidance.encode_text([""] * b), **kw)


def prompt_set(guidance: GaussianGuidance, view_dependent: bool = True, **cfg) -> PromptSet:
    return PromptSet(guidance, PROMPT, PromptConfig(view_dependent=view_dependent, **cfg))


def view_input(guidance: GaussianGuidance, prompts: PromptSet, b: int = 2, step: int = 0, n_particles: int = 1,
               with_camera: bool = True) -> LossInput:
    """The same input every call: x, views and cameras [b,16] come from a private generator; cond is the
    view-dependent prompt of each row's view."""
    gen = torch.Generator().manual_seed(77)
    x = torch.randn(b, *SHAPE, generator=gen).requires_grad_(True)
    view_idx = torch.randint(0, len(VIEWS), (b,), generator=gen)
    camera = torch.randn(b, 16, generator=gen) if with_camera else None
    return LossInput(x=x, cond=prompts.cond(view_idx), uncond=prompts.uncond_batch(b), step=step, total_steps=10,
                     camera=camera, prompts=prompts, n_particles=n_particles)


def run(loss, inp: LossInput, seed: int = 0):
    """Seeded forward + backward; returns (output, g) with g = B·∂loss/∂x / weight."""
    torch.manual_seed(seed)
    inp.x.grad = None
    out = loss(inp)
    out.loss.backward()
    return out, inp.x.grad * inp.x.shape[0] / loss.cfg.weight


def replay(loss, inp: LossInput, seed: int, offset: float = 0.0) -> tuple[Tensor, Tensor]:
    """The loss's own first draws at this seed: t, then eps (plus the offset noise where the loss uses it)."""
    torch.manual_seed(seed)
    t = loss.core.sample_t(inp.x.shape[0], inp.step, inp.total_steps)
    return t, loss.core.noise(inp.x, offset)


# ---- the particle score of VSD / ESD / ASD ---------------------------------------------------------------------------

def randomise_particle_score(loss, seed: int, std: float = 0.3) -> None:
    """Move ψ away from its zero-initialised correction so that e_ψ(c) ≠ e_ψ(∅cam)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.particle_score.net.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def snapshot(loss) -> dict:
    """A serialised-and-reloaded copy of the loss's checkpoint state (as a run checkpoint would hold it)."""
    buf = io.BytesIO()
    torch.save(loss.checkpoint_state(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def weights(loss) -> list[Tensor]:
    return [p.detach().clone() for p in loss.particle_score.net.trainable_parameters()]


# ---- plug-ins named as "loss_fixtures:function" in loss configs ---------------------------------------------------

def doubled_features(x_t: Tensor, guidance) -> Tensor:
    """A linear feature map f = 2·x_t (J = 2I), for the RSD feature plug-in tests."""
    return 2 * x_t.flatten(1)


def pooled_tanh_features(x_t: Tensor, guidance) -> Tensor:
    """A non-linear feature map [B,C,h,w] -> [B,C], for the RSD feature plug-in tests."""
    return torch.tanh(x_t).mean(dim=(2, 3))


RECORDED_REWARDS: list[Tensor] = []


def recorded_sum_reward(inp) -> Tensor:
    """Reward = Σ x̂0 per sample; each call's rewards are appended to RECORDED_REWARDS (RewardSDS tests)."""
    r = inp.x0.flatten(1).sum(1)
    RECORDED_REWARDS.append(r.clone())
    return r


def constant_reward(inp) -> Tensor:
    return torch.zeros(inp.x0.shape[0])
