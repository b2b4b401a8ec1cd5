"""Prompt processing: view-dependent prompts and their cached embeddings.

The camera sampler labels each camera with a view (front / side / back / overhead, ``dreamgen.cameras.VIEWS``); the
prompt set encodes "<prompt>, <view> view" once per view and returns per-camera rows, so the text encoder runs once
per run, not once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS
from dreamgen.errors import PromptError


@dataclass
class PromptConfig:
    view_dependent: bool = True
    negative: str = ""  # used by losses that take a negative prompt (CSD, NFSD, BSD); their config may override


def view_prompt(prompt: str, view: str) -> str:
    return f"{prompt}, {view} view"


class PromptSet:
    """Cached embeddings: cond per view [V,...], the empty prompt [1,...], an optional negative prompt [1,...]."""

    def __init__(self, guidance, prompt: str, cfg: PromptConfig, negative: str | None = None,
                 view_prompts: dict[str, str] | None = None):
        """``view_prompts`` replaces the prompt per view before its suffix (D-SDS prompt debiasing)."""
        prompt = prompt.strip()
        if not prompt:
            raise PromptError("the prompt is empty; give a text such as \"a red cube\"")
        self.prompt = prompt
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
