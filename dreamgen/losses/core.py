"""The noise-prediction core every distillation loss is written in (the notation of ``docs/losses.md``).

- Noising: ``x_t = a_t·x + s_t·eps`` with ``a_t = sqrt(ᾱ_t)``, ``s_t = sqrt(1-ᾱ_t)``.
- Classifier-free guidance, ONE convention (diffusers'): ``E_ω = e_0 + ω·(e_y − e_0)``. threestudio's
  ``e_y + s·(e_y − e_0)`` equals ``E_{s+1}``, so DreamFusion's "guidance 100" in threestudio configs is ω = 101 here.
- Perp-Neg (Armandpour et al. 2023, arXiv 2304.04968), when a batch carries its prompts (``LossInput.perp_neg``):
  the conditional prediction becomes ``ẽ_y = e_y + Σ_i w_i·perp(e_neg_i − e_0, dC)``, dC = e_y − e_0, so
  ``E_ω = e_0 + ω·(dC + Σ_i w_i·perp(e_neg_i − e_0, dC))``; perp(a, b) = a − ⟨a,b⟩/‖b‖²·b per sample. It lives
  only in :meth:`ScoreCore.eps_guided`, in the same batched denoiser call as e_y and e_0.
- Weighting ``w(t)``: ``sds`` = s_t², ``uniform`` = 1, ``fantasia3d`` = a_t·s_t², ``sigma_ratio`` = s_t/a_t.
- Timesteps: integer t in [0, T). ``t_min``/``t_max`` are fractions of T; either may be a schedule
  ``[start_step, v0, v1, end_step]`` interpolated linearly (threestudio's ``C``). ``t_sampling``: ``uniform`` draws
  t ~ U{t_lo..t_hi}; ``sqrt_anneal`` (HiFA/DreamTime-style deterministic) walks t from t_max to t_min with √progress.
- A loss returns the surrogate ``0.5·Σ(x − sg(x − g))²/B`` whose gradient w.r.t. x is exactly ``g/B``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.guidance.base import alpha_sigma
from dreamgen.prompts import PerpNeg
from dreamgen.schema import bounded, change_points, scheduled

WEIGHTINGS = ("sds", "uniform", "fantasia3d", "sigma_ratio")
T_SAMPLINGS = ("uniform", "sqrt_anneal")


@dataclass
class LossConfig:
    """Fields shared by every loss; a loss's own config dataclass extends this one."""

    name: str = "sds"
    guidance_scale: float = bounded(100.0, ge=0.0)  # ω, diffusers convention
    t_min: Any = bounded(0.02, gt=0.0, lt=1.0)  # fraction of T, or schedule [start_step, v0, v1, end_step]
    t_max: Any = bounded(0.98, gt=0.0, lt=1.0)
    t_sampling: str = bounded("uniform", choices=T_SAMPLINGS)
    per_sample_t: bool = True  # one t per batch element (threestudio) or one per batch (LucidDreamer)
    weighting: str = bounded("sds", choices=WEIGHTINGS)
    weight: float = bounded(1.0, ge=0.0)  # multiplier on the surrogate loss

    def check(self, key: str) -> None:
        check_t_range(self.t_min, self.t_max, key)


def check_t_range(t_min: Any, t_max: Any, key: str) -> None:
    """t_min < t_max at every step where either schedule changes (both may be numbers or schedules)."""
    for s in change_points(t_min, t_max):
        lo, hi = scheduled(t_min, s), scheduled(t_max, s)
        if not lo < hi:
            raise ConfigError(f"{key}.t_min={t_min} and {key}.t_max={t_max}: t_min must stay below t_max "
                              f"(at step {s}: {lo:g} ≥ {hi:g})")


def surrogate_loss(x: Tensor, g: Tensor) -> Tensor:
    """0.5·Σ(x − sg(x − g))² / B, whose gradient w.r.t. x is g / B (threestudio's reparameterisation)."""
    g = torch.nan_to_num(g.detach())
    target = (x - g).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


def bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ⟨a_i, b_i⟩ of [B,...] tensors, shaped [B,1,...,1] to broadcast against a."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.dim() - 1)))


def perp_component(a: Tensor, b: Tensor) -> Tensor:
    """perp(a, b) = a − ⟨a,b⟩/‖b‖²·b per sample: the part of a orthogonal to b ([B,...] each; b = 0 gives a)."""
    return a - bdot(a, b) / bdot(b, b).clamp_min(torch.finfo(b.dtype).tiny) * b


class ScoreCore:
    """Shared pieces of every loss, bound to one guidance model and one loss config."""

    def __init__(self, guidance, cfg: LossConfig):
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {cfg.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if cfg.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"unknown t_sampling {cfg.t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}")
        self.guidance = guidance
        self.cfg = cfg
        self.alphas_cumprod = guidance.alphas_cumprod.float()
        self.T = int(self.alphas_cumprod.shape[0])
        self._text_cache: dict[str, Tensor] = {}
        self.t_bounds: tuple[Any, Any] | None = None  # set per step from LossInput.t_bounds

    # ---- timesteps -------------------------------------------------------------------------------------------
    def t_fractions(self, step: int) -> tuple[float, float]:
        """(t_min, t_max) at ``step`` as fractions of T: the stage's bounds when it sets them, else the loss's."""
        t_min, t_max = self.t_bounds or (self.cfg.t_min, self.cfg.t_max)
        return scheduled(t_min, step), scheduled(t_max, step)

    def t_range(self, step: int) -> tuple[int, int]:
        f_lo, f_hi = self.t_fractions(step)
        lo, hi = int(self.T * f_lo), int(self.T * f_hi)
        lo = min(max(lo, 1), self.T - 1)
        hi = min(max(hi, lo), self.T - 1)
        return lo, hi

    def sample_t(self, n: int, step: int, total_steps: int = 1) -> Tensor:
        """[n] long timesteps for this optimisation step."""
        lo, hi = self.t_range(step)
        dev = self.alphas_cumprod.device
        if self.cfg.t_sampling == "sqrt_anneal":
            p = math.sqrt(min(max(step / max(total_steps, 1), 0.0), 1.0))
            t = int(round(hi - (hi - lo) * p))
            return torch.full((n,), t, dtype=torch.long, device=dev)
        k = n if self.cfg.per_sample_t else 1
        t = torch.randint(lo, hi + 1, (k,), device=dev)
        return t.expand(n).clone()

    # ---- schedule quantities, shaped [B,1,...,1] to broadcast against x -------------------------------------
    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t), each [B,1,...,1] in like's dtype."""
        return alpha_sigma(self.alphas_cumprod, t, like)

    def weight(self, t: Tensor, like: Tensor, kind: str | None = None) -> Tensor:
        a, s = self.alpha_sigma(t, like)
        kind = kind or self.cfg.weighting
        if kind == "sds":
            return s**2
        if kind == "uniform":
            return torch.ones_like(s)
        if kind == "fantasia3d":
            return a * s**2
        if kind == "sigma_ratio":
            return s / a
        raise ValueError(f"unknown weighting {kind!r}; valid: {', '.join(WEIGHTINGS)}")

    def add_noise(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(t, x)
        return a * x + s * eps

    def perturb(self, x: Tensor, step: int, total_steps: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """The draw every SDS-family step starts with: t for this step, eps ~ N(0, I), x_t = a_t·sg(x) + s_t·eps.
        Returns (t [B], eps, x_t)."""
        t = self.sample_t(x.shape[0], step, total_steps)
        eps = torch.randn_like(x)
        return t, eps, self.add_noise(x.detach(), eps, t)

    # ---- denoiser ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def eps(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        return self.guidance.predict_noise(x_t, t, emb)

    @torch.no_grad()
    def eps_guided(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, perp_neg: PerpNeg | None = None,
                   extra: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(ẽ_y, e_0, [ε of each ``extra`` embedding]) at (x_t, t), all from ONE batched denoiser call.

        ẽ_y is e_y, or with ``perp_neg`` the Perp-Neg conditional prediction e_y + Σ_i w_i·perp(e_neg_i − e_0, dC):
        its K negatives per sample are rows of the same call, 2 + len(extra) + K rows per sample in all.
        """
        b, k = x_t.shape[0], 0 if perp_neg is None else perp_neg.weights.shape[1]
        n = 2 + len(extra)
        embs = [cond, uncond, *extra]
        x_in, t_in = [x_t] * n, [t] * n
        if k:
            embs.append(perp_neg.negatives.flatten(0, 1))  # [B·K,...], sample-major
            x_in.append(x_t.repeat_interleave(k, dim=0))
            t_in.append(t.repeat_interleave(k, dim=0))
        out = self.guidance.predict_noise(torch.cat(x_in), torch.cat(t_in), torch.cat(embs))
        e_y, e_0, *rest = out[: n * b].chunk(n)
        if k:
            e_neg = out[n * b:].reshape(b, k, *x_t.shape[1:])
            d_c = e_y - e_0
            w = perp_neg.weights.to(x_t).reshape(b, k, *([1] * (x_t.dim() - 1)))
            e_y = e_y + sum(w[:, i] * perp_component(e_neg[:, i] - e_0, d_c) for i in range(k))
        return e_y, e_0, rest

    @staticmethod
    def cfg_combine(e_cond: Tensor, e_uncond: Tensor, scale: float) -> Tensor:
        """E_ω = e_0 + ω·(e_y − e_0)."""
        return e_uncond + scale * (e_cond - e_uncond)

    def eps_cfg(self, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, scale: float | None = None,
                perp_neg: PerpNeg | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(E_ω, ẽ_y, e_0) from one batched forward (:meth:`eps_guided`); ω = the config's ``guidance_scale``."""
        e_y, e_0, _ = self.eps_guided(x_t, t, cond, uncond, perp_neg)
        w = self.cfg.guidance_scale if scale is None else scale
        return self.cfg_combine(e_y, e_0, w), e_y, e_0

    # ---- deterministic DDIM pieces (η = 0) ---------------------------------------------------------------------
    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(t, x_t)
        return (x_t - s * eps) / a

    def ddim_step(self, x_t: Tensor, eps: Tensor, t: Tensor, s_to: Tensor) -> Tensor:
        """Move x_t at t to timestep ``s_to`` along the deterministic DDIM path (s_to > t is inversion)."""
        x0 = self.x0_from_eps(x_t, eps, t)
        a_s, s_s = self.alpha_sigma(s_to, x_t)
        return a_s * x0 + s_s * eps

    @torch.no_grad()
    def ddim_invert(self, x: Tensor, t_from: Tensor, t_to: Tensor, emb: Tensor, jump: int | None = None) -> Tensor:
        """Deterministic DDIM inversion of x at ``t_from`` up to ``t_to`` (both [B] long, t_to ≥ t_from).

        Steps of at most ``jump`` timesteps (one direct step when None), ε predicted with ``emb`` at each step's
        start: ceil((t_to − t_from)/jump) NFE. Samples already at ``t_to`` are left unchanged.
        """
        cur = t_from.clone()
        while bool((cur < t_to).any()):
            nxt = t_to if jump is None else torch.minimum(cur + jump, t_to)
            moved = self.ddim_step(x, self.eps(x, cur, emb), cur, nxt)
            todo = (cur < t_to).reshape(-1, *([1] * (x.dim() - 1)))
            x = torch.where(todo, moved, x)
            cur = nxt
        return x

    # ---- helpers shared by several losses ---------------------------------------------------------------------
    def noise(self, x: Tensor, offset: float = 0.0) -> Tensor:
        """eps ~ N(0, I) like x, plus ``offset``·N(0, 1) per channel, constant over pixels and batch (offset noise)."""
        eps = torch.randn_like(x)
        if offset:
            eps = eps + offset * torch.randn(1, x.shape[1], *([1] * (x.dim() - 2)), device=x.device, dtype=x.dtype)
        return eps

    def text_embedding(self, text: str, n: int = 1) -> Tensor:
        """[n,...] embedding of a fixed prompt (a loss's negative prompt), encoded once and cached on the core."""
        if text not in self._text_cache:
            with torch.no_grad():
                self._text_cache[text] = self.guidance.encode_text([text])
        emb = self._text_cache[text]
        return emb.expand(n, *emb.shape[1:])

    def t_plus(self, t: Tensor, ratio: float, step: int) -> Tensor:
        """A later timestep t + ⌊U·ratio·(t − t_lo)⌋, U ~ U[0,1) per sample, at most T−1 (ScaleDreamer, DSD)."""
        lo, _ = self.t_range(step)
        dt = ratio * (t - lo).clamp(min=0).float() * torch.rand(t.shape, device=t.device)
        return (t + dt.long()).clamp(max=self.T - 1)

    @torch.no_grad()
    def ddim_cfg_sample(self, x_t: Tensor, t_from: Tensor, t_to: Tensor | None, cond: Tensor, uncond: Tensor,
                        n_steps: int, scale: float | None = None, perp_neg: PerpNeg | None = None) -> Tensor:
        """Deterministic CFG DDIM ODE from x_t at ``t_from`` down to ``t_to`` ([B] long) in ``n_steps`` equal steps.

        One E_ω per step (2·n_steps NFE, plus K per step with Perp-Neg), on the grid
        τ_k = round(t_from + (t_to − t_from)·k/n). ``t_to=None`` samples clean data: the grid runs to 0 and the last
        step returns the x̂0 prediction.
        """
        end = torch.zeros_like(t_from) if t_to is None else t_to
        frac = torch.linspace(0.0, 1.0, n_steps + 1, device=t_from.device)[:, None]
        grid = (t_from[None].float() + (end - t_from)[None].float() * frac).round().long()  # [n+1, B]
        for k in range(n_steps):
            e_cfg, _, _ = self.eps_cfg(x_t, grid[k], cond, uncond, scale, perp_neg)
            if t_to is None and k == n_steps - 1:
                return self.x0_from_eps(x_t, e_cfg, grid[k])
            x_t = self.ddim_step(x_t, e_cfg, grid[k], grid[k + 1])
        return x_t


class FixedNoise(torch.nn.Module):
    """A N(0, I) draw made once, lazily at first use (global RNG, so seeded runs agree), kept in the state_dict.

    A resumed run loads the same draw (the load hook gives the empty buffer the saved shape first). Asking for
    another shape (a new resolution or batch size) draws anew.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("value", None)
        self.register_load_state_dict_pre_hook(self._materialise)

    def forward(self, shape: Sequence[int], like: Tensor) -> Tensor:
        if self.value is None or tuple(self.value.shape) != tuple(shape):
            self.value = torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
        return self.value.to(like)

    def _materialise(self, module, state_dict, prefix, *args) -> None:
        if prefix + "value" in state_dict:
            self.value = torch.empty_like(state_dict[prefix + "value"])
