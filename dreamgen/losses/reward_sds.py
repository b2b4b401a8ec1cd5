"""RewardSDS — reward-weighted score distillation (Chachy, Yariv & Benaim, "RewardSDS: Aligning Score Distillation
via Reward-Weighted Sampling", arXiv 2503.09601, 2025; docs/losses.md).

Update rule, one t per sample and N noises eps^1..eps^N per sample:

    x_t^n = a_t·x + s_t·eps^n
    g^n   = w(t)·(E_ω(x_t^n) − eps^n)                                  the SDS direction of noise n
    x̂0^n  = DDIM_ω'(x_t^n: t → 0) in k steps, decoded and scored: r_n = R(x̂0^n)
    g     = Σ_n c_n·g^n,   c = strategy(r)

Noises whose denoised samples score well are followed, badly scoring ones avoided. Strategies (per sample):
- ``none``:     one noise, no scoring: exactly SDS.
- ``best``:     c = 1/k on the ``n_best`` highest rewards.
- ``weighted``: c = softmax(r/τ); equal rewards give SDS averaged over the N noises.
- ``min-max``:  c = λ_max/n_max on the n_max highest rewards, −λ_min/n_min on the n_min lowest: with the
  defaults g = 0.9·mean(g_top-2) − 0.1·mean(g_bottom-2) (the README's best strategy).
N = 1 is SDS under every strategy. The reward is pluggable (``dreamgen.rewards``); the default,
``prompt_alignment``, is the guidance's own zero-shot classifier, since the paper's ImageReward and aesthetic
models would need downloads.

Defaults (``2D_experiments/guidance.py``, ``reward_strategy.py``): N = 8, k = 15 DDIM steps at ω' = 7.5 for the
path, min-max with λ = (0.9, 0.1) over the top/bottom 2, n_best 1, softmax at temperature 1; the SDS part keeps
DreamFusion's ω = 100 and w = s_t².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.registry import register
from dreamgen.rewards import RewardInput, get_reward

STRATEGIES = ("none", "best", "weighted", "min-max")


@dataclass
class RewardSDSConfig(LossConfig):
    name: str = "reward-sds"
    n_noises: int = 8  # N
    strategy: str = "min-max"
    reward: str = "prompt_alignment"  # a name in dreamgen.rewards.REWARDS or "package.module:function"
    path_steps: int = 15  # k, DDIM steps from t to clean data
    path_guidance_scale: float = 7.5  # ω' of the denoising path
    n_best: int = 1
    n_max: int = 2
    n_min: int = 2
    lambda_max: float = 0.9
    lambda_min: float = 0.1
    temperature: float = 1.0  # τ of the weighted strategy


@register("loss", "reward-sds", config=RewardSDSConfig,
          summary="RewardSDS: SDS over N noises, weighted by a reward of each noise's denoised sample",
          paper="RewardSDS (Chachy et al., 2025)", state="reward function", nfe="2·N·(path_steps + 1)")
class RewardSDS(DistillationLoss):
    def __init__(self, cfg: RewardSDSConfig, guidance):
        super().__init__(cfg, guidance)
        if cfg.strategy not in STRATEGIES:
            raise ConfigError(f"unknown reward strategy {cfg.strategy!r}; valid: {', '.join(STRATEGIES)}")
        need = {"best": cfg.n_best, "min-max": cfg.n_max + cfg.n_min}.get(cfg.strategy, 1)
        if cfg.n_noises > 1 and cfg.n_noises < need:
            raise ConfigError(f"reward strategy {cfg.strategy!r} needs n_noises ≥ {need}, got {cfg.n_noises}")
        self.reward = get_reward(cfg.reward)

    def coefficients(self, r: Tensor) -> Tensor:
        """rewards [N,B] -> the weight c_n of each noise's SDS direction, [N,B]."""
        cfg, c = self.cfg, torch.zeros_like(r)
        if cfg.strategy == "weighted":
            return torch.softmax(r / cfg.temperature, dim=0)
        if cfg.strategy == "best":
            return c.scatter(0, r.topk(cfg.n_best, dim=0).indices, 1.0 / cfg.n_best)
        c = c.scatter(0, r.topk(cfg.n_max, dim=0).indices, cfg.lambda_max / cfg.n_max)
        return c.scatter(0, r.topk(cfg.n_min, dim=0, largest=False).indices, -cfg.lambda_min / cfg.n_min)

    def forward(self, inp: LossInput) -> LossOutput:
        x, core, b = inp.x, self.core, inp.x.shape[0]
        n = 1 if self.cfg.strategy == "none" else self.cfg.n_noises
        t = core.sample_t(b, inp.step, inp.total_steps)
        eps = torch.randn(n, *x.shape, device=x.device, dtype=x.dtype)

        def rep(v: Tensor) -> Tensor:  # n copies, noise-major: row n·B + b
            return v.repeat(n, *([1] * (v.dim() - 1)))

        t_n, cond_n, uncond_n = t.repeat(n), rep(inp.cond), rep(inp.uncond)
        perp_neg_n = None if inp.perp_neg is None else inp.perp_neg.repeat(n)
        x_t = core.add_noise(rep(x.detach()), eps.flatten(0, 1), t_n)
        e_cfg, _, _ = core.eps_cfg(x_t, t_n, cond_n, uncond_n, perp_neg=perp_neg_n)
        g_n = (core.weight(t_n, x_t) * (e_cfg - eps.flatten(0, 1))).reshape(n, *x.shape)
        logs = {"t": t.float().mean().item()}

        if n == 1:
            g = g_n[0]
        else:
            x0 = core.ddim_cfg_sample(x_t, t_n, None, cond_n, uncond_n, self.cfg.path_steps,
                                      self.cfg.path_guidance_scale, perp_neg_n)
            r = self.reward(RewardInput(self.guidance.decode(x0), x0, cond_n, uncond_n, self.guidance))
            r = r.detach().reshape(n, b).to(x)
            c = self.coefficients(r)
            g = (c.reshape(n, b, *([1] * (x.dim() - 1))) * g_n).sum(0)
            logs.update(reward_mean=r.mean().item(), reward_spread=(r.max(0).values - r.min(0).values).mean().item())
        loss = self.cfg.weight * surrogate_loss(x, g)
        logs["grad_norm"] = g.norm().item() / b
        return LossOutput(loss, logs)
