"""The embedded prior: a small text-conditioned pixel-space diffusion model of the procedural world at 32×32.

Design (chosen for training speed on one GPU in a few minutes, and for CPU inference):
- Denoiser: ``diffusers.UNet2DModel`` on the 2×2 pixel-unshuffled image (16×16×12, 4× fewer positions than 32×32;
  the output is pixel-shuffled back). Conv resnet blocks at 16×16 and 8×8, self-attention only at 4×4 and in the
  mid block, where 16 tokens cost almost nothing but give every pixel a global view (front/back of the house).
- Text: captions are parsed into three slots (colour, object, view) with the world's parser; each slot has its own
  embedding table whose row 0 means "absent", so the empty prompt (all slots absent) is the learned NULL condition of
  classifier-free guidance. An MLP maps the concatenated slots to the conditioning vector, which the UNet adds to its
  time embedding (``class_embed_type="identity"``) and every resnet applies as FiLM (``scale_shift``).
- Parameterisation: v-prediction (trained with min-SNR-γ weights) on diffusers' cosine schedule
  (``squaredcos_cap_v2``, 1000 steps): Nichol & Dhariwal designed it for 32×32 pixel-space models, and its last
  step reaches SNR ≈ 0, so sampling starts from pure noise. ε for the guidance is ``a_t·v + s_t·x_t``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from dreamgen.cameras import VIEWS
from dreamgen.errors import PromptError
from dreamgen.world.captions import parse_caption
from dreamgen.world.objects import COLOURS, SHAPES

SLOTS = ("colour", "object", "view")


def default_scheduler_config() -> dict[str, Any]:
    return {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
            "clip_sample": False}


@dataclass
class PriorSpec:
    """Everything needed to rebuild the model; stored next to the weights as ``shapes_prior.json``."""

    colours: list[str] = field(default_factory=lambda: list(COLOURS))
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    image_size: int = 32
    patch: int = 2  # pixel-unshuffle factor
    block_out_channels: list[int] = field(default_factory=lambda: [64, 96, 96])
    layers_per_block: int = 2
    attention_head_dim: int = 32
    slot_dim: int = 64
    scheduler: dict[str, Any] = field(default_factory=default_scheduler_config)
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # of the training renders

    @property
    def cond_dim(self) -> int:
        return 4 * self.block_out_channels[0]  # UNet2DModel's time-embedding width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PriorSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown prior spec keys {unknown}")
        return cls(**d)

    def make_scheduler(self) -> DDPMScheduler:
        return DDPMScheduler(**self.scheduler)


class CaptionTokenizer:
    """Caption -> slot indices [colour, object, view], each 0 when absent (so "" -> [0,0,0], the null prompt)."""

    def __init__(self, spec: PriorSpec):
        self.tables = (spec.colours, spec.shapes, spec.views)

    def __call__(self, prompts: list[str]) -> Tensor:
        """prompts -> long [N,3]."""
        rows = []
        for p in prompts:
            if not p.strip():
                rows.append([0, 0, 0])
                continue
            colour, shape, view = parse_caption(p)  # PromptError for unknown words, listing the vocabulary
            words = (colour, shape, view)
            for word, table, slot in zip(words, self.tables, SLOTS):
                if word is not None and word not in table:
                    raise PromptError(f"the embedded prior's weights were trained without the {slot} {word!r}; "
                                      f"known: {', '.join(table)}")
            rows.append([0 if w is None else table.index(w) + 1 for w, table in zip(words, self.tables)])
        return torch.tensor(rows, dtype=torch.long).reshape(len(prompts), len(SLOTS))


class SlotTextEncoder(nn.Module):
    """Slot indices [N,3] -> conditioning vector [N, cond_dim]: per-slot embeddings (row 0 = absent), then an MLP."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        sizes = (len(spec.colours), len(spec.shapes), len(spec.views))
        self.embeddings = nn.ModuleList(nn.Embedding(n + 1, spec.slot_dim) for n in sizes)
        self.mlp = nn.Sequential(nn.Linear(len(SLOTS) * spec.slot_dim, spec.cond_dim), nn.SiLU(),
                                 nn.Linear(spec.cond_dim, spec.cond_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        slots = [emb(tokens[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(slots, dim=-1))


def build_unet(spec: PriorSpec) -> UNet2DModel:
    ch = spec.patch * spec.patch * 3
    n = len(spec.block_out_channels)
    # Attention only at the lowest resolution (and in the mid block, which runs there too).
    down = ["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    return UNet2DModel(
        sample_size=spec.image_size // spec.patch, in_channels=ch, out_channels=ch,
        down_block_types=tuple(down), up_block_types=tuple(up), block_out_channels=tuple(spec.block_out_channels),
        layers_per_block=spec.layers_per_block, attention_head_dim=spec.attention_head_dim,
        norm_num_groups=32, resnet_time_scale_shift="scale_shift", class_embed_type="identity",
        flip_sin_to_cos=True, freq_shift=0,
    )


class ShapesPrior(nn.Module):
    """Text encoder + UNet. ``forward`` is the v-prediction on full-resolution images [B,3,32,32] in [-1,1]."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        self.spec = spec
        self.tokenizer = CaptionTokenizer(spec)
        self.text_encoder = SlotTextEncoder(spec)
        self.unet = build_unet(spec)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> cond [N, cond_dim]."""
        tokens = self.tokenizer(prompts).to(self.text_encoder.mlp[0].weight.device)
        return self.text_encoder(tokens)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x_t: [B,3,S,S], t: [B] long, cond: [B,cond_dim] -> v: [B,3,S,S]."""
        return denoise(self.unet, self.spec.patch, x_t, t, cond)


def denoise(unet: nn.Module, patch: int, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """Run a (possibly LoRA-adapted) UNet on the pixel-unshuffled input and shuffle the output back."""
    h = F.pixel_unshuffle(x_t, patch)  # [B,3p²,S/p,S/p]
    out = unet(h, t, class_labels=cond.to(h.dtype)).sample
    return F.pixel_shuffle(out, patch)


def v_to_eps(v: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """ε = a_t·v + s_t·x_t (alpha, sigma broadcastable to x_t)."""
    return alpha * v + sigma * x_t


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
