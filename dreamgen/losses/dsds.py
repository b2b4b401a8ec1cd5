"""D-SDS — Debiased Score Distillation Sampling (Hong et al., "Debiasing Scores and Prompts of 2D Diffusion for
View-consistent Text-to-3D Generation", NeurIPS 2023, arXiv 2303.15413; docs/losses.md).

Score debiasing: SDS (:mod:`dreamgen.losses.sds`) with the update clipped elementwise by a threshold that rises over
training, one t and one eps per sample, x_t = a_t·x + s_t·eps:

    g = clamp(w(t)·(E_ω(x_t; y) − eps), −c(k), c(k)),      c = [0, 2.0, 8.0, 10000] (SD; IF uses 0.5 → 2)

The clip acts after the weighting, as threestudio's ``grad_clip``; c → ∞ gives SDS, and |g| ≤ c elementwise.

Prompt debiasing happens once, before training, on the view-dependent prompts: see
:func:`dreamgen.prompt_debias.debias_view_prompts`. ``prompt_debias_model`` names the masked language model
("bert-base-uncased" in the paper); empty switches it off. The trainer, which builds the prompt set, applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dreamgen.losses.base import LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.losses.sds import SDS
from dreamgen.registry import register
from dreamgen.schema import scheduled


@dataclass
class DSDSConfig(LossConfig):
    name: str = "dsds"
    grad_clip: Any = field(default_factory=lambda: [0, 2.0, 8.0, 10000])  # c(k), number or schedule
    prompt_debias_model: str = ""  # masked LM name or path for prompt debiasing; "" = off
    prompt_debias_threshold: float = 0.95  # drop a word from a view's prompt when its ratio r_v is below this


@register("loss", "dsds", config=DSDSConfig, summary="Debiased SDS: SDS clipped to ±c(k), optional prompt debiasing",
          paper="Debiasing Scores and Prompts of 2D Diffusion (Hong et al., NeurIPS 2023)",
          state="none (masked LM at setup only)", nfe=2)
class DSDS(SDS):
    def forward(self, inp: LossInput) -> LossOutput:
        g_sds, t = self.sds_grad(inp)
        c = scheduled(self.cfg.grad_clip, inp.step)
        g = g_sds.clamp(-c, c)
        loss = self.cfg.weight * surrogate_loss(inp.x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "clip": c, "grad_norm": g.norm().item() / g.shape[0]})
