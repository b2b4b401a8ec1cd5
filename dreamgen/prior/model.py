"""The embedded prior: a small text- (and optionally camera-) conditioned pixel-space diffusion model of the world.

Two versions, both described by a :class:`PriorSpec` stored beside the weights: v1 (32×32, 2×2 unshuffle, text only)
and v2 (64×64, 4×4 unshuffle, text + optional camera; :meth:`PriorSpec.v2`). Design (chosen for training speed on
one GPU in a few minutes, and for CPU inference):
- Denoiser: ``diffusers.UNet2DModel`` on the pixel-unshuffled image (16×16×12 for v1, 16×16×48 for v2: either way a
  16×16 grid, so a v2 step costs about what a v1 step does; the output is pixel-shuffled back). Conv resnet blocks
  at 16×16 and 8×8, self-attention only at 4×4 and in the mid block, where 16 tokens cost almost nothing but give
  every pixel a global view (front or back of an object).
- Text: captions are parsed into three slots (colour, object, view) with the world's parser; each slot has its own
  embedding table whose row 0 means "absent", so the empty prompt (all slots absent) is the learned NULL condition of
  classifier-free guidance. An MLP maps the concatenated slots to the text vector [cond_dim].
- Camera (``camera_dim > 0``): the camera relative to the object's front, as :data:`CAMERA_FEATURES` (sin/cos
  azimuth, elevation, normalised distance), goes through its own MLP; a learned null-camera vector stands in when
  there is no camera. Training drops the camera for a fraction of samples independently of the caption, so one
  model serves text-only and camera-aware guidance (Zero-1-to-3 / MVDream style).
- Conditioning vector = text vector + camera vector (or the null camera), which the UNet adds to its time embedding
  (``class_embed_type="identity"``) and every resnet applies as FiLM (``scale_shift``).
- Parameterisation: v-prediction (trained with min-SNR-γ weights) on diffusers' cosine schedule
  (``squaredcos_cap_v2``, 1000 steps): Nichol & Dhariwal designed it for 32×32 pixel-space models, and its last
  step reaches SNR ≈ 0, so sampling starts from pure noise. ε for the guidance is ``a_t·v + s_t·x_t``.

Embedding layout (what :meth:`ShapesPrior.encode_text` returns and ``forward`` takes, batch-first so the losses can
index and concatenate rows): ``[text vector (cond_dim) | camera features (camera_dim) | camera present (1)]``; the
camera part is absent when ``camera_dim == 0`` (v1: the embedding is the text vector itself). ``encode_text`` gives
the null camera (features 0, present 0); :meth:`ShapesPrior.fuse_camera` replaces the camera part of any embedding,
so a cached text embedding takes a per-render camera without re-encoding the text.
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
# The camera condition, relative to the object's front (azimuth 0 looks at it, cf. dreamgen.cameras).
CAMERA_FEATURES = ("sin_azimuth", "cos_azimuth", "elevation_rad", "distance")
# v2 = the v1 spec with these changes (v1 weights' JSON files lack camera_dim, so its default stays 0).
V2_CHANGES: dict[str, Any] = {"image_size": 64, "patch": 4, "camera_dim": len(CAMERA_FEATURES)}


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
    camera_dim: int = 0  # len(CAMERA_FEATURES): a camera input; 0: text only (v1)
    camera_distance: list[float] = field(default_factory=lambda: [1.5, 2.0])  # mapped to [−1, 1] as a feature

    def __post_init__(self) -> None:
        if self.camera_dim not in (0, len(CAMERA_FEATURES)):
            raise ValueError(f"camera_dim must be 0 or {len(CAMERA_FEATURES)} ({', '.join(CAMERA_FEATURES)}), "
                             f"got {self.camera_dim}")
        multiple = self.patch * 2 ** (len(self.block_out_channels) - 1)  # each block after the first halves the grid
        if self.image_size % multiple:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {multiple} (patch × 2^(blocks−1))")

    @classmethod
    def v2(cls, **overrides: Any) -> "PriorSpec":
        """The v2 architecture: 64×64 pixels, 4×4 unshuffle, camera input; ``overrides`` change any field."""
        return cls(**{**V2_CHANGES, **overrides})

    @property
    def cond_dim(self) -> int:
        return 4 * self.block_out_channels[0]  # UNet2DModel's time-embedding width

    @property
    def emb_dim(self) -> int:
        """Width of an embedding row: the text vector, then (with a camera input) camera features and a flag."""
        return self.cond_dim + (self.camera_dim + 1 if self.camera_dim else 0)

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


class CameraEncoder(nn.Module):
    """Camera part of an embedding [N, camera_dim + 1] (features, present flag) -> camera vector [N, cond_dim]: an
    MLP of the features where present, the learned null-camera vector elsewhere."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(spec.camera_dim, spec.cond_dim), nn.SiLU(),
                                 nn.Linear(spec.cond_dim, spec.cond_dim))
        self.null = nn.Parameter(torch.zeros(spec.cond_dim))

    def forward(self, part: Tensor) -> Tensor:
        present = part[:, -1:] > 0.5  # [N,1]
        return torch.where(present, self.mlp(part[:, :-1]), self.null.to(part.dtype))


class ShapesPrior(nn.Module):
    """Text (+ camera) encoder + UNet. ``forward`` is the v-prediction on full-resolution images [B,3,S,S] in [-1,1].

    The embedding layout is described in the module docstring.
    """

    def __init__(self, spec: PriorSpec):
        super().__init__()
        self.spec = spec
        self.tokenizer = CaptionTokenizer(spec)
        self.text_encoder = SlotTextEncoder(spec)
        self.unet = build_unet(spec)
        # Absent (not merely unused) without a camera input, so v1 weights load with their exact keys.
        self.camera_encoder = CameraEncoder(spec) if spec.camera_dim else None

    def encode_text(self, prompts: list[str]) -> Tensor:
        """prompts -> emb [N, emb_dim]: the text vector, with the null camera when the model takes a camera."""
        tokens = self.tokenizer(prompts).to(self.text_encoder.mlp[0].weight.device)
        return self.embed(tokens)

    def embed(self, tokens: Tensor, camera: Tensor | None = None, present: Tensor | None = None) -> Tensor:
        """Slot tokens long [N,3] (+ camera features [N, camera_dim], ``present`` bool [N]) -> emb [N, emb_dim]."""
        text = self.text_encoder(tokens)
        return self.fuse_camera(text, camera, present) if self.spec.camera_dim else text

    def camera_features(self, azimuth: Tensor, elevation: Tensor, distance: Tensor) -> Tensor:
        """Cameras relative to the object's front: azimuth, elevation (degrees), distance, all [N] -> [N, camera_dim]
        (:data:`CAMERA_FEATURES`), on the model's device."""
        lo, hi = self.spec.camera_distance
        az, el = torch.deg2rad(azimuth.float()), torch.deg2rad(elevation.float())
        feats = torch.stack([az.sin(), az.cos(), el, (2 * distance.float() - (lo + hi)) / (hi - lo)], dim=-1)
        return feats.to(self.text_encoder.mlp[0].weight.device)

    def fuse_camera(self, emb: Tensor, camera: Tensor | None, present: Tensor | None = None) -> Tensor:
        """Set the camera part of embeddings: emb [N, cond_dim or emb_dim] (only its text vector is read), camera
        [N, camera_dim] features or None (the null camera), present bool [N] (False rows get the null camera)
        -> [N, emb_dim]."""
        if not self.spec.camera_dim:
            raise ValueError("these prior weights have no camera input (camera_dim 0)")
        text = emb[:, :self.spec.cond_dim]
        n = text.shape[0]
        if camera is None:
            flag, camera = text.new_zeros(n), text.new_zeros(n, self.spec.camera_dim)
        else:
            flag = text.new_ones(n) if present is None else present.to(text.dtype)
            camera = camera.to(text.dtype) * flag[:, None]  # a null row carries no camera values either
        return torch.cat([text, camera, flag[:, None]], dim=1)

    def condition(self, emb: Tensor) -> Tensor:
        """emb [N, emb_dim] -> the UNet's conditioning vector [N, cond_dim] (text vector + camera or null vector)."""
        if self.camera_encoder is None:
            return emb
        cond_dim = self.spec.cond_dim
        return emb[:, :cond_dim] + self.camera_encoder(emb[:, cond_dim:])

    def forward(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x_t: [B,3,S,S], t: [B] long, emb: [B,emb_dim] -> v: [B,3,S,S]."""
        return denoise(self.unet, self.spec.patch, x_t, t, self.condition(emb))


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
