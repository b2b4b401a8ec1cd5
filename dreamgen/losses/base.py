"""What a distillation loss receives and returns; its extra state goes into run checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from dreamgen.losses.core import LossConfig, ScoreCore
from dreamgen.prompts import PerpNeg


@dataclass
class LossInput:
    x: Tensor  # [B,C,h,w] guidance-space encoding of the renders; requires grad
    cond: Tensor  # [B,...] view-dependent prompt embeddings
    uncond: Tensor  # [B,...] empty-prompt embeddings
    step: int = 0
    total_steps: int = 1
    camera: Tensor | None = None  # [B,16] flattened camera-to-world matrices
    prompts: Any = None  # dreamgen.prompts.PromptSet, for losses that need other prompts (negative, view-free)
    rgb: Tensor | None = None  # [B,H,W,3] the renders themselves
    opacity: Tensor | None = None  # [B,H,W,1] rendered opacity
    points: Tensor | None = None  # [B,H,W,3] expected surface point per pixel (3-D consistent noise, CFD)
    n_particles: int = 1  # x holds P particles particle-major: rows p*B/P:(p+1)*B/P render particle p
    source_x: Tensor | None = None  # [B,C,h,w] frozen source renders at the same cameras (editing, DDS)
    source_cond: Tensor | None = None  # [B,...] the source prompt's embeddings (editing, DDS)
    t_bounds: tuple[Any, Any] | None = None  # this stage's (t_min, t_max), numbers or schedules; None: the loss's own
    perp_neg: PerpNeg | None = None  # Perp-Neg's prompts for these cameras (prompts.perp_neg); cond = perp_neg.cond
    source_perp_neg: PerpNeg | None = None  # the same for the source prompt (DDS with Perp-Neg)


@dataclass
class LossOutput:
    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


class DistillationLoss(nn.Module):
    """Base class. Subclasses implement ``forward(LossInput) -> LossOutput``.

    The guidance is held by the core (not as a submodule), so a loss's ``state_dict`` holds only its own state
    (LoRA weights, fixed noise, ...). Losses with an optimiser of their own extend ``checkpoint_state``.
    """

    def __init__(self, cfg: LossConfig, guidance):
        super().__init__()
        self.cfg = cfg
        self.core = ScoreCore(guidance, cfg)

    @property
    def guidance(self):
        return self.core.guidance

    def __call__(self, inp: LossInput) -> LossOutput:
        self.core.t_bounds = inp.t_bounds  # the stage's noise range for this step (Magic3D's fine stage)
        return super().__call__(inp)

    def forward(self, inp: LossInput) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any]:
        return {"module": self.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
