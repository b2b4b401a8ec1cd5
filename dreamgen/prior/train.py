"""Training the embedded prior from scratch on procedurally rendered world captions (``scripts/train_prior.py``).

- Data: :func:`dreamgen.world.make_dataset` (seeded), held on the training device as uint8 with its captions
  tokenised once; batches are drawn with replacement by a seeded generator.
- Objective: v-prediction MSE with min-SNR-γ weights ``min(SNR, γ)/(SNR + 1)`` (Hang et al. 2023: the x0-loss
  weight min(SNR, γ) expressed for v), uniform t, caption dropout ``p_uncond`` (the whole caption becomes the null
  prompt) for classifier-free guidance.
- AdamW with linear warm-up then a constant rate; EMA of the weights (decay warmed up as (1+k)/(10+k)), which is
  what gets exported. bf16 autocast on CUDA.
- The work dir holds ``checkpoint.pt`` (model, EMA, optimiser, step, RNG: a resumed run continues exactly),
  ``metrics.jsonl`` (one line per log interval) and ``samples_<step>.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS
from dreamgen.prior.io import DEFAULT_WEIGHTS, save_prior
from dreamgen.prior.model import PriorSpec, ShapesPrior, count_parameters
from dreamgen.prior.sample import grid, sample, to_uint8
from dreamgen.world.captions import caption
from dreamgen.world.dataset import make_dataset
from dreamgen.world.objects import COLOURS, SHAPES
from dreamgen.world.render import DEFAULT_BACKGROUND


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
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_steps: int = 50  # DDIM steps of the final sample grid
    spec: PriorSpec = field(default_factory=PriorSpec)

    # Fields that must match for a checkpoint to be resumed (they fix the data and the model).
    RESUME_KEYS = ("n_images", "seed", "batch_size", "lr", "warmup", "p_uncond", "min_snr_gamma", "ema_decay")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def load_data(cfg: TrainConfig, model: ShapesPrior, device: torch.device) -> tuple[Tensor, Tensor]:
    """-> images uint8 [N,3,S,S] and caption tokens long [N,3], both on ``device``."""
    ds = make_dataset(cfg.n_images, resolution=cfg.spec.image_size, seed=cfg.seed)
    tokens = model.tokenizer(ds.captions)
    return ds.images.permute(0, 3, 1, 2).contiguous().to(device), tokens.to(device)


def snr_weights(alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """[T] min-SNR-γ weights for the v-prediction MSE."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / (snr + 1)


def training_loss(model: ShapesPrior, x0: Tensor, tokens: Tensor, alphas_cumprod: Tensor, weights: Tensor,
                  p_uncond: float, g: torch.Generator) -> Tensor:
    """x0 [B,3,S,S] in [-1,1], tokens [B,3] -> weighted v-MSE (scalar)."""
    b = x0.shape[0]
    dev = x0.device
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), device=dev, generator=g)
    eps = torch.randn(x0.shape, device=dev, generator=g)
    drop = torch.rand(b, device=dev, generator=g) < p_uncond
    tokens = tokens.masked_fill(drop[:, None], 0)
    ab = alphas_cumprod[t].view(b, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    pred = model(x_t, t, model.text_encoder(tokens))
    mse = (pred.float() - v).square().mean(dim=(1, 2, 3))
    return (weights[t] * mse).mean()


SAMPLE_COLUMNS = len(SHAPES) + 2


def sample_prompts() -> list[str]:
    """One row per colour: "a {colour} {shape}" for every shape, then the house's front view and back view."""
    return [p for c in COLOURS
            for p in [caption(c, s) for s in SHAPES] + [caption(c, "house", v) for v in ("front", "back")]]


class Trainer:
    def __init__(self, cfg: TrainConfig, t_start: float | None = None):
        self.t_start = time.time() if t_start is None else t_start
        self.device = resolve_device(cfg.device)
        if cfg.batch_size <= 0:
            cfg.batch_size = 512 if self.device.type == "cuda" else 32
        cfg.spec.background = list(DEFAULT_BACKGROUND)
        cfg.spec.views = list(VIEWS)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.model = ShapesPrior(cfg.spec).to(self.device)
        self.ema = ShapesPrior(cfg.spec).to(self.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        ac = cfg.spec.make_scheduler().alphas_cumprod.float()
        self.alphas_cumprod = ac.to(self.device)
        self.weights = snr_weights(ac, cfg.min_snr_gamma).to(self.device)
        self.ckpt_path = self.out / "checkpoint.pt"

    # ---- checkpoint ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
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
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
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

    def over_budget(self) -> bool:
        return self.cfg.time_budget > 0 and time.time() - self.t_start >= self.cfg.time_budget

    def train(self, log=print) -> dict[str, Any]:
        cfg, dev = self.cfg, self.device
        resumed = self.maybe_resume()
        t0 = time.time()
        images, tokens = load_data(cfg, self.model, dev)
        data_s = time.time() - t0
        log(f"device {dev}; {count_parameters(self.model) / 1e6:.2f} M parameters; {len(images)} images rendered "
            f"in {data_s:.1f} s; batch {cfg.batch_size}; " + (f"resumed at step {self.step}" if resumed else "fresh"))
        from tqdm import tqdm

        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
        metrics = (self.out / "metrics.jsonl").open("a")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="prior", unit="it", dynamic_ncols=True)
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
                loss = training_loss(self.model, x0, tokens[idx], self.alphas_cumprod, self.weights, cfg.p_uncond,
                                     self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self.update_ema()
            loss_sum += loss.detach()
            n_sum += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                mean = (loss_sum / n_sum).item()  # the only host sync of the loop
                if not math.isfinite(mean):
                    raise SystemExit(f"loss became {mean} at step {self.step}; lower --lr")
                now = time.time()
                rec = {"step": self.step, "loss": mean, "lr": self.lr_at(self.step - 1),
                       "it_s": (self.step - s_log) / max(now - t_log, 1e-9), "elapsed_s": now - self.t_start}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{mean:.4f}")
                loss_sum.zero_()
                n_sum, t_log, s_log = 0, now, self.step
            if self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
        bar.close()
        metrics.close()
        self.save_checkpoint()
        train_s = time.time() - t0 - data_s
        grid_path = self.write_samples()
        meta = {"steps": self.step, "batch_size": cfg.batch_size, "n_images": cfg.n_images, "seed": cfg.seed,
                "lr": cfg.lr, "device": str(dev), "data_seconds": round(data_s, 1),
                "parameters": count_parameters(self.model), "config": {k: v for k, v in asdict(cfg).items()
                                                                       if k not in ("spec", "out", "export")}}
        exported = save_prior(self.ema, cfg.export, meta) if cfg.export else None
        summary = {"step": self.step, "stopped_by_budget": stopped_by_budget, "data_seconds": data_s,
                   "train_seconds": train_s, "samples": str(grid_path), "exported": str(exported),
                   "total_seconds": time.time() - self.t_start}
        log(json.dumps(summary))
        return summary

    def write_samples(self) -> Path:
        import imageio.v3 as iio

        self.ema.eval()
        prompts = sample_prompts()
        g = torch.Generator(self.device).manual_seed(self.cfg.seed)
        imgs = to_uint8(sample(self.ema, prompts, steps=self.cfg.sample_steps, generator=g))
        path = self.out / f"samples_{self.step:06d}.png"
        iio.imwrite(path, grid(imgs, ncol=SAMPLE_COLUMNS).numpy())
        return path
