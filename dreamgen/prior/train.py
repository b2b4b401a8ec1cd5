"""Training the embedded prior from scratch on procedurally rendered world captions (``scripts/train_prior.py``).

- Presets (:data:`PRESETS`): ``v2`` (the default: 64×64, 4×4 unshuffle, camera input), ``v1`` (the 32×32 text-only
  architecture) and ``tiny`` (the v2 layout at toy widths, for CPU smoke tests). They differ only in the spec.
- Data: :func:`dreamgen.world.make_dataset` (seeded, rendered on the training device), held on the training device
  as uint8 with its captions tokenised and its cameras featurised once; batches are drawn with replacement by a
  seeded generator.
- Objective: v-prediction MSE with min-SNR-γ weights ``min(SNR, γ)/(SNR + 1)`` (Hang et al. 2023: the x0-loss weight
  min(SNR, γ) expressed for v), raised to at least ``weight_floor``, uniform t, caption dropout ``p_uncond`` (the
  whole caption becomes the null prompt) for classifier-free guidance and, independently, camera dropout
  ``p_camera_drop`` (the null camera), so the model learns p(x | text), p(x | text, camera), p(x | camera) and p(x).
  The min-SNR weight falls to 0 as the SNR does (0.09 at t = 800, 0.006 at t = 950 of 1000), where a sample's layout
  — the pose a camera asks for — is decided and where score distillation's large-t steps read the model:
  ``weight_floor`` keeps those steps in the objective; ``high_noise_share`` trains a share of each batch on the top
  tenth of the schedule at weight 1, where the noisy image holds almost no signal, the best x0 estimate is the
  condition's mean image and only the condition can set a sample's pose (docs/prior.md, "Where the pose is decided").
- ``init``: start from exported weights (a packaged name or a path; their spec replaces the preset's) instead of
  random ones — a fine-tune of a shipped prior. ``front_bias``: the share of the house's, tv's and arrow's renders
  within 45° of their front (0.7, as web photos; 0.25 spreads them evenly).
- AdamW with linear warm-up then a constant rate; EMA of the weights (decay warmed up as (1+k)/(10+k)), which is
  what gets exported. bf16 autocast on CUDA.
- The work dir holds ``checkpoint.pt`` (model, EMA, optimiser, step, RNG states as tensors, config as plain types:
  loaded with ``weights_only=True``, so a crafted file cannot run code; a resumed run continues exactly),
  ``metrics.jsonl`` (one line per log interval) and ``samples_<step>.png``. Progress goes to stdout as plain lines.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS, CameraConfig
from dreamgen.errors import GuidanceLoadError
from dreamgen.prior.io import DEFAULT_WEIGHTS, load_prior, save_prior
from dreamgen.prior.model import PriorSpec, ShapesPrior, count_parameters
from dreamgen.prior.sample import grid, sample, to_uint8
from dreamgen.world.captions import caption
from dreamgen.world.dataset import make_dataset
from dreamgen.world.objects import FRONT_FEATURE_SHAPES
from dreamgen.world.render import DEFAULT_BACKGROUND

PRESETS: dict[str, Callable[[], PriorSpec]] = {
    "v2": PriorSpec.v2,
    "v1": PriorSpec,
    "tiny": lambda: PriorSpec.v2(block_out_channels=[32, 32, 32], layers_per_block=1, attention_head_dim=16,
                                 slot_dim=8),
}


@dataclass
class TrainConfig:
    steps: int = 20000
    batch_size: int = 0  # 0: 512 on CUDA, 32 on CPU
    lr: float = 1e-3
    warmup: int = 300
    n_images: int = 60000
    seed: int = 0
    device: str = "auto"
    out: str = "outputs/prior"
    export: str = str(DEFAULT_WEIGHTS)
    time_budget: float = 0.0  # seconds since start (data generation included); 0 = no limit
    p_uncond: float = 0.1
    p_camera_drop: float = 0.25  # independent of p_uncond; unused without a camera input
    min_snr_gamma: float = 5.0
    weight_floor: float = 0.0  # lower bound of the min-SNR weight (see the module docstring)
    front_bias: float = 0.7  # of the front objects' photos, the fraction taken within 45° of the front
    high_noise_share: float = 0.0  # of each batch, the samples drawn from the schedule's top tenth at weight 1
    init: str = ""  # exported weights to start from ('' = random initialisation)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_steps: int = 50  # DDIM steps of the final sample grid; 0: no grid
    spec: PriorSpec = field(default_factory=PriorSpec.v2)

    # Fields that must match for a checkpoint to be resumed (they fix the data and the model).
    RESUME_KEYS = ("n_images", "seed", "batch_size", "lr", "warmup", "p_uncond", "p_camera_drop", "min_snr_gamma",
                   "weight_floor", "init", "front_bias", "high_noise_share",
                   "ema_decay")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def load_data(cfg: TrainConfig, model: ShapesPrior, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """-> images uint8 [N,3,S,S], caption tokens long [N,3] and camera features [N,camera_dim] (None without a
    camera input), all on ``device``."""
    ds = make_dataset(cfg.n_images, resolution=cfg.spec.image_size, seed=cfg.seed, device=device,
                      front_bias=cfg.front_bias)
    tokens = model.tokenizer(ds.captions)
    camera = model.camera_features(ds.azimuth, ds.elevation, ds.distance) if cfg.spec.camera_dim else None
    return ds.images.permute(0, 3, 1, 2).contiguous().to(device), tokens.to(device), camera


def snr_weights(alphas_cumprod: Tensor, gamma: float, floor: float = 0.0) -> Tensor:
    """[T] min-SNR-γ weights for the v-prediction MSE, at least ``floor``."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (snr.clamp(max=gamma) / (snr + 1)).clamp(min=floor)


def training_loss(model: ShapesPrior, x0: Tensor, tokens: Tensor, camera: Tensor | None, alphas_cumprod: Tensor,
                  weights: Tensor, p_uncond: float, p_camera_drop: float, g: torch.Generator,
                  high_noise_share: float = 0.0) -> Tensor:
    """x0 [B,3,S,S] in [-1,1], tokens [B,3], camera [B,camera_dim] or None -> weighted v-MSE (scalar).

    A share ``high_noise_share`` of the batch takes t from the top tenth of the schedule at weight 1: there the SNR is
    ≈ 0, the v-MSE is the x0-MSE, and the best prediction is the mean image of the condition — the pose a camera
    asks for, which min-SNR weights (≈ 0 there) never teach."""
    b = x0.shape[0]
    dev = x0.device
    n_t = alphas_cumprod.shape[0]
    t = torch.randint(0, n_t, (b,), device=dev, generator=g)
    w = weights[t]
    if high_noise_share > 0:
        high = torch.rand(b, device=dev, generator=g) < high_noise_share
        t = torch.where(high, torch.randint(n_t - n_t // 10, n_t, (b,), device=dev, generator=g), t)
        w = torch.where(high, 1.0, w)  # the others keep their uniform draw and its weight
    eps = torch.randn(x0.shape, device=dev, generator=g)
    drop = torch.rand(b, device=dev, generator=g) < p_uncond
    tokens = tokens.masked_fill(drop[:, None], 0)
    keep_camera = None if camera is None else torch.rand(b, device=dev, generator=g) >= p_camera_drop
    ab = alphas_cumprod[t].view(b, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    pred = model(x_t, t, model.embed(tokens, camera, keep_camera))
    mse = (pred.float() - v).square().mean(dim=(1, 2, 3))
    return (w * mse).mean()


def grid_rows(spec: PriorSpec) -> tuple[list[str], list[tuple[str, float]], int]:
    """The final sample grid, one row per colour: "a {colour} {shape}" for every shape the spec knows, the front and
    back views of its front-feature shapes, then (with a camera input) those shapes captioned plainly but with the
    camera at azimuth 0 and 180°. -> (text-only prompts, (prompt, azimuth) camera rows, columns per colour)."""
    fronts = [s for s in FRONT_FEATURE_SHAPES if s in spec.shapes]
    text = [p for c in spec.colours for p in [caption(c, s) for s in spec.shapes]
            + [caption(c, s, v) for s in fronts for v in ("front", "back")]]
    cams = [(caption(c, s), az) for c in spec.colours for s in fronts for az in (0.0, 180.0)] if spec.camera_dim else []
    return text, cams, len(text) // len(spec.colours) + len(cams) // len(spec.colours)


class Trainer:
    def __init__(self, cfg: TrainConfig, t_start: float | None = None):
        self.t_start = time.time() if t_start is None else t_start
        self.device = resolve_device(cfg.device)
        if cfg.batch_size <= 0:
            cfg.batch_size = 512 if self.device.type == "cuda" else 32
        start = None
        if cfg.init:
            try:
                start = load_prior(cfg.init)
            except GuidanceLoadError as e:
                raise SystemExit(f"--init: {e}") from None
            cfg.spec = start.spec  # a fine-tune keeps the architecture it starts from
        cfg.spec.background = list(DEFAULT_BACKGROUND)
        cfg.spec.views = list(VIEWS)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions once
        torch.manual_seed(cfg.seed)
        self.model = ShapesPrior(cfg.spec).to(self.device)
        if start is not None:
            self.model.load_state_dict(start.state_dict())
        self.ema = ShapesPrior(cfg.spec).to(self.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        ac = cfg.spec.make_scheduler().alphas_cumprod.float()
        self.alphas_cumprod = ac.to(self.device)
        self.weights = snr_weights(ac, cfg.min_snr_gamma, cfg.weight_floor).to(self.device)
        self.ckpt_path = self.out / "checkpoint.pt"

    # ---- checkpoint ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        # Tensors and plain types only, so that resuming can load with weights_only=True.
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                 "step": self.step, "gen": self.gen.get_state(), "cpu_rng": torch.get_rng_state(),
                 "config": {k: getattr(self.cfg, k) for k in TrainConfig.RESUME_KEYS},
                 "spec": self.cfg.spec.to_dict()}
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.ckpt_path)  # atomic: a run killed mid-save keeps the previous checkpoint

    def maybe_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        try:
            # On the CPU: RNG states must stay CPU ByteTensors; load_state_dict copies weights to the device.
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a checkpoint of this script: corrupt, or objects beyond tensors/plain types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SystemExit(f"cannot resume from {self.ckpt_path} ({first}); delete it or use another --out")
        mine = {k: getattr(self.cfg, k) for k in TrainConfig.RESUME_KEYS}
        if state["config"] != mine or state["spec"] != self.cfg.spec.to_dict():
            diff = sorted(k for k in mine if state["config"].get(k) != mine[k])
            raise SystemExit(f"{self.ckpt_path} was written with different settings ({', '.join(diff) or 'spec'});"
                             f" use another --out or the same flags")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["cpu_rng"])
        return True

    # ---- training --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_ema(self) -> None:
        k = self.step
        decay = min(self.cfg.ema_decay, (1 + k) / (10 + k))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(self.cfg.warmup, 1))

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def over_budget(self) -> bool:
        return self.cfg.time_budget > 0 and self.elapsed() >= self.cfg.time_budget

    def train(self, log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict[str, Any]:
        cfg, dev, spec = self.cfg, self.device, self.cfg.spec
        resumed = self.maybe_resume()
        log(f"prior: {spec.image_size}px, patch {spec.patch}, camera_dim {spec.camera_dim}, "
            f"{count_parameters(self.model) / 1e6:.2f} M parameters, device {dev}, batch {cfg.batch_size}, "
            + (f"resumed at step {self.step}" if resumed else "fresh"))
        log(f"rendering {cfg.n_images} images at {spec.image_size}px on {dev} ...")
        t0 = time.time()
        images, tokens, camera = load_data(cfg, self.model, dev)
        data_s = time.time() - t0
        log(f"rendered in {data_s:.1f} s; training (elapsed {self.elapsed():.0f} s"
            + (f" of a {cfg.time_budget:.0f} s budget)" if cfg.time_budget > 0 else ")"))

        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        metrics = (self.out / "metrics.jsonl").open("a")
        loss_sum, n_sum, t_log, s_log = torch.zeros((), device=dev), 0, time.time(), self.step
        stopped_by_budget = False
        self.model.train()
        while self.step < cfg.steps:
            if self.over_budget():
                stopped_by_budget = True
                break
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            idx = torch.randint(0, len(images), (cfg.batch_size,), device=dev, generator=self.gen)
            x0 = images[idx].float() / 127.5 - 1
            with autocast:
                loss = training_loss(self.model, x0, tokens[idx], None if camera is None else camera[idx],
                                     self.alphas_cumprod, self.weights, cfg.p_uncond, cfg.p_camera_drop, self.gen,
                                     cfg.high_noise_share)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self.update_ema()
            loss_sum += loss.detach()
            n_sum += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                mean = (loss_sum / n_sum).item()  # the only host sync of the loop
                if not math.isfinite(mean):
                    raise SystemExit(f"loss became {mean} at step {self.step}; lower --lr")
                now = time.time()
                rec = {"step": self.step, "loss": mean, "lr": self.lr_at(self.step - 1),
                       "it_s": (self.step - s_log) / max(now - t_log, 1e-9), "elapsed_s": now - self.t_start}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                log(f"step {self.step}/{cfg.steps} loss {mean:.4f} lr {rec['lr']:.2e} {rec['it_s']:.1f} it/s "
                    f"elapsed {rec['elapsed_s']:.0f} s")
                loss_sum.zero_()
                n_sum, t_log, s_log = 0, now, self.step
            if self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
        metrics.close()
        self.save_checkpoint()
        train_s = time.time() - t0 - data_s
        log(f"stopped at step {self.step} ({'time budget' if stopped_by_budget else 'step limit'}); "
            f"exporting the EMA weights, then the sample grid")
        meta = {"steps": self.step, "batch_size": cfg.batch_size, "n_images": cfg.n_images, "seed": cfg.seed,
                "lr": cfg.lr, "device": str(dev), "data_seconds": round(data_s, 1),
                "train_seconds": round(train_s, 1), "parameters": count_parameters(self.model),
                "config": {k: v for k, v in asdict(cfg).items() if k not in ("spec", "out", "export")}}
        exported = save_prior(self.ema, cfg.export, meta) if cfg.export else None
        grid_path = self.write_samples() if cfg.sample_steps > 0 else None
        summary = {"step": self.step, "stopped_by_budget": stopped_by_budget, "data_seconds": data_s,
                   "train_seconds": train_s, "samples": grid_path and str(grid_path), "exported": exported and str(exported),
                   "total_seconds": self.elapsed()}
        log(json.dumps(summary))
        return summary

    @torch.no_grad()
    def write_samples(self) -> Path:
        """``samples_<step>.png``: :func:`grid_rows` from the EMA model, one row per colour."""
        import imageio.v3 as iio

        self.ema.eval()
        text, cams, ncol = grid_rows(self.cfg.spec)
        g = torch.Generator(self.device).manual_seed(self.cfg.seed)
        imgs = to_uint8(sample(self.ema, text, steps=self.cfg.sample_steps, generator=g))  # [C·k,S,S,3]
        if cams:
            az, view = torch.tensor([a for _, a in cams]), CameraConfig()  # at the eval orbit's elevation/distance
            feats = self.ema.camera_features(az, torch.full_like(az, view.eval_elevation),
                                             torch.full_like(az, view.eval_distance))
            with_cam = to_uint8(sample(self.ema, [p for p, _ in cams], steps=self.cfg.sample_steps, generator=g,
                                       camera=feats))
            n = len(self.cfg.spec.colours)  # interleave: each colour's text row, then its camera samples
            imgs = torch.cat([imgs.reshape(n, -1, *imgs.shape[1:]), with_cam.reshape(n, -1, *with_cam.shape[1:])],
                             dim=1).flatten(0, 1)
        path = self.out / f"samples_{self.step:06d}.png"
        iio.imwrite(path, grid(imgs, ncol=ncol).numpy())
        return path
