"""Reward functions that score samples (higher is better), for RewardSDS (``dreamgen/losses/reward_sds.py``).

A reward is any callable ``fn(inp: RewardInput) -> Tensor[N]``. Name one in a config by its registered name
(``dreamgen.rewards.REWARDS``) or as ``"package.module:function"``. The reward is never differentiated.

Built in, and needing no download:
- ``prompt_alignment`` (default): the guidance itself as a zero-shot classifier (Li et al., "Your Diffusion
  Model is Secretly a Zero-Shot Classifier", 2023). log p(y | x) − log p(x) ≈ E_{t,ε}[‖e_0(x_t) − ε‖² − ‖e_y(x_t) − ε‖²]
  up to a positive weight, estimated at fixed probe timesteps with fixed probe noises shared by every sample
  (common random numbers: candidates are ranked on the same draws, and the score is a fixed function of x).
- ``colorfulness``: Hasler & Süsstrunk's (2003) colourfulness of the decoded image, a pixel-statistics
  aesthetic proxy: with rg = R − G and yb = (R + G)/2 − B, C = √(σ_rg² + σ_yb²) + 0.3·√(μ_rg² + μ_yb²).
The RewardSDS paper scores with ImageReward or an aesthetic predictor; wrap one as ``module:function`` to use it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from dreamgen.errors import ConfigError
from dreamgen.guidance.base import alpha_sigma


@dataclass
class RewardInput:
    rgb: Tensor  # [N,H,W,3] decoded samples in [0,1]
    x0: Tensor  # [N,C,h,w] the same samples in the guidance's space
    cond: Tensor  # [N,...] prompt embeddings of each sample
    uncond: Tensor  # [N,...] empty-prompt embeddings
    guidance: Any  # the frozen guidance (for rewards that use the denoiser)


RewardFn = Callable[[RewardInput], Tensor]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return deco


ALLOW_IMPORTS = "DREAMGEN_ALLOW_IMPORTS"


def import_callable(spec: str) -> Callable:
    """``"package.module:function"`` -> the function, with errors that say what is wrong.

    Importing a module runs its code, and a config can come from anyone, so a config may name code only when the
    user running dreamgen allows that module: ``DREAMGEN_ALLOW_IMPORTS=package.module`` (comma-separated).
    """
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"expected 'package.module:function', got {spec!r}")
    allowed = {m.strip() for m in os.environ.get(ALLOW_IMPORTS, "").split(",") if m.strip()}
    if module not in allowed:
        raise ConfigError(f"the config names code to import ({spec!r}); importing runs it, so dreamgen does that only "
                          f"for modules you allow: {ALLOW_IMPORTS}={module} dreamgen ...")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {spec!r}: {e}") from e
    if not callable(fn):
        raise ConfigError(f"{spec!r} is not callable")
    return fn


def get_reward(spec: str) -> RewardFn:
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" in spec:
        return import_callable(spec)
    raise ConfigError(f"unknown reward {spec!r}; valid: {', '.join(sorted(REWARDS))}, or 'package.module:function'")


@register_reward("prompt_alignment")
@torch.no_grad()
def prompt_alignment(inp: RewardInput, probe_t: tuple[int, ...] = (300, 500, 700), seed: int = 0) -> Tensor:
    """Mean over probes of (‖e_0(x_t) − ε‖² − ‖e_y(x_t) − ε‖²)/D, x_t = a_t·x0 + s_t·ε: the diffusion-classifier
    estimate of how much better the prompt explains x0 than no prompt does."""
    x0, n, k = inp.x0, inp.x0.shape[0], len(probe_t)
    ac = inp.guidance.alphas_cumprod
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(k, 1, *x0.shape[1:], generator=gen).to(x0)  # one probe noise per t, shared by all samples
    eps = eps.expand(k, *x0.shape).reshape(k * n, *x0.shape[1:])
    t = torch.tensor(probe_t, device=ac.device).repeat_interleave(n)
    x0_k = x0.repeat(k, *([1] * (x0.dim() - 1)))
    a, s = alpha_sigma(ac, t, x0_k)
    x_t = a * x0_k + s * eps
    reps = [1] * (inp.cond.dim() - 1)
    e = inp.guidance.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                   torch.cat([inp.cond.repeat(k, *reps), inp.uncond.repeat(k, *reps)]))
    e_y, e_0 = e.chunk(2)
    gain = ((e_0 - eps) ** 2 - (e_y - eps) ** 2).flatten(1).mean(1)
    return gain.reshape(k, n).mean(0)


@register_reward("colorfulness")
@torch.no_grad()
def colorfulness(inp: RewardInput) -> Tensor:
    r, g, b = inp.rgb.unbind(-1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    std = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    mean = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return std + 0.3 * mean
