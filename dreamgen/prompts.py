"""Prompt processing: view-dependent prompts, their cached embeddings, and Perp-Neg's prompts.

The camera sampler labels each camera with a view (front / side / back / overhead, ``dreamgen.cameras.VIEWS``); the
prompt set encodes "<prompt>, <view> view" once per view and returns per-camera rows, so the text encoder runs once
per run, not once per step.

Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm: Transform 2D Diffusion into 3D, alleviate
Janus problem and Beyond", arXiv 2304.04968) guides with the other views' prompts as negatives, keeping only the part
of each negative direction perpendicular to the positive one, so a side view is pushed away from "front" without
losing its own content. ``PromptSet.perp_neg`` gives the prompts and weights of that rule, following threestudio's
prompt processor: the positive prompt interpolates the view prompts by azimuth (front↔side for |φ| < 90°,
side↔back beyond), the two neighbouring views are the negatives, and their weights decay with the interpolation
fraction r as −f(r), f(r) = a·exp(−b·r) + c. The guidance rule itself lives in ``ScoreCore.eps_guided``
(``dreamgen/losses/core.py``); ``docs/losses.md`` describes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS, wrap_degrees
from dreamgen.errors import ConfigError, PromptError


@dataclass
class PromptConfig:
    view_dependent: bool = True
    negative: str = ""  # used by losses that take a negative prompt (CSD, NFSD, BSD); their config may override
    perp_neg: bool = False  # Perp-Neg guidance with the other views' prompts (needs view_dependent)
    # Perp-Neg weight decays (a, b, c) of f(r) = a·exp(−b·r) + c, threestudio's defaults. Between front and side,
    # r = 1 − |φ|/90 (1 at the front): the front prompt weighs −f_fs(r), the side prompt −f_sf(1 − r).
    perp_neg_f_fs: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sf: list[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    # Between side and back, r = 2 − |φ|/90 (1 at the side): the side prompt weighs −f_sb(r), the front −f_fsb(r).
    perp_neg_f_sb: list[float] = field(default_factory=lambda: [1.0, 0.5, -0.606])
    perp_neg_f_fsb: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.967])

    def check(self, key: str) -> None:
        if self.perp_neg and not self.view_dependent:
            raise ConfigError(f"{key}.perp_neg=true needs view-dependent prompts: set {key}.view_dependent=true")
        for name in ("perp_neg_f_fs", "perp_neg_f_sf", "perp_neg_f_sb", "perp_neg_f_fsb"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{key}.{name}={list(getattr(self, name))}: needs three numbers (a, b, c)")


@dataclass
class PerpNeg:
    """Perp-Neg's prompts for a batch of B cameras (see the module docstring)."""

    cond: Tensor  # [B,...] the azimuth-interpolated positive prompt: the batch's LossInput.cond
    negatives: Tensor  # [B,K,...] K negative prompts per sample
    weights: Tensor  # [B,K] their signed weights w_i (≤ 0 pushes away from that prompt)

    def repeat(self, n: int) -> "PerpNeg":
        """n copies of the batch, copy-major (row k·B + b), like ``Tensor.repeat``."""
        def rep(v: Tensor) -> Tensor:
            return v.repeat(n, *([1] * (v.dim() - 1)))

        return PerpNeg(rep(self.cond), rep(self.negatives), rep(self.weights))

    @staticmethod
    def cat(parts: list["PerpNeg"]) -> "PerpNeg":
        """The batches one after the other (all with the same K)."""
        return PerpNeg(*(torch.cat([getattr(p, f) for p in parts]) for f in ("cond", "negatives", "weights")))


def view_prompt(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


def decay(abc: list[float], r: Tensor) -> Tensor:
    """Perp-Neg's shifted exponential decay f(r) = a·exp(−b·r) + c."""
    a, b, c = (float(v) for v in abc)
    return a * torch.exp(-b * r) + c


class PromptSet:
    """Cached embeddings: cond per view [V,...], the empty prompt [1,...], an optional negative prompt [1,...]."""

    def __init__(self, guidance, prompt: str, cfg: PromptConfig, negative: str | None = None,
                 view_prompts: dict[str, str] | None = None):
        """``view_prompts`` replaces the prompt per view before its suffix (D-SDS prompt debiasing)."""
        prompt = prompt.strip()
        if not prompt:
            raise PromptError("the prompt is empty; give a text such as \"a red cube\"")
        self.prompt = prompt
        self.cfg = cfg
        self.view_dependent = cfg.view_dependent
        per_view = view_prompts or {}
        texts = ([view_prompt(per_view.get(v, prompt), v) for v in VIEWS] if cfg.view_dependent else [prompt])
        with torch.no_grad():
            self.cond_views = guidance.encode_text(texts)  # [V,...]
            self.plain = guidance.encode_text([prompt])  # [1,...] view-independent (VSD's LoRA prompt)
            self.uncond = guidance.encode_text([""])  # [1,...]
            neg = cfg.negative if negative is None else negative
            self.negative = guidance.encode_text([neg]) if neg else self.uncond

    def _expand(self, emb: Tensor, n: int) -> Tensor:
        return emb.expand(n, *emb.shape[1:])

    def cond(self, view_idx: Tensor) -> Tensor:
        """view_idx: [B] long -> [B,...] view-dependent conditional embeddings."""
        if not self.view_dependent:
            return self._expand(self.cond_views, len(view_idx))
        return self.cond_views[view_idx.to(self.cond_views.device)]

    def cond_plain(self, n: int) -> Tensor:
        return self._expand(self.plain, n)

    def uncond_batch(self, n: int) -> Tensor:
        return self._expand(self.uncond, n)

    def negative_batch(self, n: int) -> Tensor:
        return self._expand(self.negative, n)

    def perp_neg(self, azimuth: Tensor, view_idx: Tensor | None = None) -> PerpNeg:
        """Perp-Neg's prompts for cameras at ``azimuth`` ([B] degrees, 0 = front); rows whose ``view_idx`` ([B] long
        into VIEWS) is overhead keep the overhead prompt with zero-weight negatives (plain CFG), as threestudio's."""
        if not self.view_dependent:
            raise ConfigError("prompts.perp_neg needs view-dependent prompts: set prompts.view_dependent=true")
        cfg, views = self.cfg, self.cond_views
        front, side, back = (views[VIEWS.index(v)] for v in ("front", "side", "back"))
        az = wrap_degrees(azimuth.float()).abs().to(views.device)  # [B] in [0, 180]
        near_front = az < 90
        r = torch.where(near_front, 1 - az / 90, 2 - az / 90)  # [B], 1 at the front (or side), 0 at the side (or back)
        rv = r.reshape(-1, *([1] * (views.dim() - 1)))
        nf = near_front.reshape(rv.shape)
        cond = torch.where(nf, rv * front + (1 - rv) * side, rv * side + (1 - rv) * back)  # [B,...]
        negatives = torch.stack([torch.where(nf, front, side), torch.where(nf, side, front)], dim=1)  # [B,2,...]
        weights = -torch.stack([torch.where(near_front, decay(cfg.perp_neg_f_fs, r), decay(cfg.perp_neg_f_sb, r)),
                                torch.where(near_front, decay(cfg.perp_neg_f_sf, 1 - r), decay(cfg.perp_neg_f_fsb, r))],
                               dim=1)  # [B,2]
        if view_idx is not None:
            overhead = (view_idx.to(views.device) == VIEWS.index("overhead"))
            cond = torch.where(overhead.reshape(rv.shape), views[VIEWS.index("overhead")], cond)
            weights = weights.masked_fill(overhead[:, None], 0.0)
        return PerpNeg(cond, negatives, weights)

    def for_cameras(self, guidance, cams, repeat: int = 1) -> tuple[Tensor, PerpNeg | None]:
        """The conditional rows [repeat·B,...] of B renders, ``repeat`` times over (particle-major): view-dependent,
        or with ``cfg.perp_neg`` Perp-Neg's azimuth-interpolated prompt with its negatives; each row with its
        camera when the guidance is camera-aware (``guidance.condition``)."""
        view_idx = cams.view_idx.repeat(repeat)
        if not self.cfg.perp_neg:
            return guidance.condition(self.cond(view_idx), cams), None
        pn = self.perp_neg(cams.azimuth.repeat(repeat), view_idx)
        negatives = [guidance.condition(pn.negatives[:, k], cams) for k in range(pn.negatives.shape[1])]
        pn = PerpNeg(guidance.condition(pn.cond, cams), torch.stack(negatives, 1), pn.weights)
        return pn.cond, pn
