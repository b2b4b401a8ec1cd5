"""One lab run (``run_lab``): θ fitted to a target by a registered loss; the table of every loss (``main_table``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamgen import registry
from dreamgen.errors import ConfigError, DreamgenError
from dreamgen.lab2d.models import CAMERA_DIM, TARGET_PROMPT, CameraGenerator, Lab2DGuidance, ParticleCloud
from dreamgen.lab2d.targets import TARGETS, make_target
from dreamgen.losses.base import LossInput

SETTINGS = ("particles", "camera")
INIT_MEAN = (-1.5, 2.0)  # θ starts as N(INIT_MEAN, INIT_STD²I) (particles) or m = INIT_MEAN, B = INIT_STD·I (camera)
INIT_STD = 0.5
LAB_LOSS_DEFAULTS = {"weighting": "sds", "t_min": 0.02, "t_max": 0.98}  # plus guidance_scale = the lab's ω
MLP_LOSS_DEFAULTS = {"lora_lr": 1e-3}  # the MLP score learns at this rate unless overridden


@dataclass
class LabResult:
    loss: str
    setting: str
    target: str
    steps: int
    overrides: dict[str, Any]
    trace_ratio: float  # tr Cov(q) / tr Cov(p)
    mean_error: float  # ‖E_q[x] − E_p[x]‖
    modes_covered: float | None  # mixture target only
    sec_per_step: float
    fitted: Tensor  # [N,2] samples of the fitted q
    target_samples: Tensor  # [N,2] samples of p

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.loss} ({extra})" if extra else self.loss


@dataclass
class LabSkip:
    loss: str
    setting: str
    target: str
    overrides: dict[str, Any]
    reason: str

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.loss} ({extra})" if extra else self.loss


def _loss_config(entry, loss_overrides: dict[str, Any], guidance_scale: float, score: str):
    names = {f.name for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(loss_overrides) - names)
    if unknown:
        raise ConfigError(f"loss {entry.name!r} has no option {unknown[0]!r}; valid: {', '.join(sorted(names))}")
    values = {**LAB_LOSS_DEFAULTS, "guidance_scale": guidance_scale, "camera_dim": CAMERA_DIM}
    if score == "mlp":
        values.update(MLP_LOSS_DEFAULTS)
    values.update(loss_overrides)
    return entry.config(**{k: v for k, v in values.items() if k in names})


def initial_model(setting: str, n_particles: int, gen: torch.Generator) -> nn.Module:
    mean = torch.tensor(INIT_MEAN)
    if setting == "particles":
        return ParticleCloud(mean + INIT_STD * torch.randn(n_particles, 2, generator=gen))
    if setting == "camera":
        return CameraGenerator(mean, INIT_STD * torch.eye(2))
    raise ConfigError(f"unknown lab setting {setting!r}; valid: {', '.join(SETTINGS)}")


def run_lab(loss_name: str, setting: str = "particles", target: str = "gaussian", steps: int = 3000,
            lr: float = 1e-2, seed: int = 0, n_particles: int = 256, loss_overrides: dict[str, Any] | None = None,
            guidance_scale: float = 1.0, score: str = "exact", eval_samples: int = 2048) -> LabResult:
    """Fit θ to the target with the registered loss ``loss_name``; metrics on the fitted distribution.

    ``n_particles``: the number of points (particles) or of cameras drawn per step (camera). Raises DreamgenError
    (ConfigError...) for losses that need inputs the lab cannot give (DDS's source, RSD's ≥ 3 particles).
    """
    overrides = dict(loss_overrides or {})
    entry = registry.lookup("loss", loss_name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: a thread pool costs more than it gives, badly on a busy CPU
    try:
        return _run(entry, setting, target, steps, lr, seed, n_particles, overrides, guidance_scale, score,
                    eval_samples)
    finally:
        torch.set_num_threads(threads)


def _run(entry, setting, target, steps, lr, seed, n_particles, overrides, guidance_scale, score,
         eval_samples) -> LabResult:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p = make_target(target)
    model = initial_model(setting, n_particles, gen)
    guidance = Lab2DGuidance(p, model, score)
    loss = entry.cls(_loss_config(entry, overrides, guidance_scale, score), guidance)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cond, uncond = guidance.encode_text([TARGET_PROMPT]), guidance.encode_text([""])

    t0 = time.perf_counter()
    for step in range(steps):
        x, camera = model.render(n_particles)
        b = x.shape[0]
        inp = LossInput(x=x.reshape(b, 2, 1, 1), cond=cond.expand(b, 1), uncond=uncond.expand(b, 1), step=step,
                        total_steps=steps, camera=camera, n_particles=model.n_particles)
        out = loss(inp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    sec = (time.perf_counter() - t0) / max(steps, 1)

    eval_gen = torch.Generator().manual_seed(seed + 1)
    fitted = model.samples(eval_samples, eval_gen)
    q_mean, q_cov = fitted.mean(0), torch.cov(fitted.T)
    return LabResult(
        loss=entry.name, setting=setting, target=target, steps=steps, overrides=overrides,
        trace_ratio=(q_cov.trace() / p.cov.trace()).item(), mean_error=(q_mean - p.mean).norm().item(),
        modes_covered=p.modes_covered(fitted) if target == "mixture" else None, sec_per_step=sec,
        fitted=fitted, target_samples=p.sample(eval_samples, eval_gen))


VARIANTS: dict[str, list[dict[str, Any]]] = {"esd": [{}, {"lambda_entropy": 0.75}, {"lambda_entropy": 1.0}],
                                            "rsd": [{}, {"gamma": 1.0}]}  # extra rows for some losses


def main_table(losses: Sequence[str] | None = None, settings: Sequence[str] = SETTINGS,
               targets: Sequence[str] = TARGETS, steps: int = 1500, lr: float = 1e-2, seed: int = 0,
               n_particles: int = 256, guidance_scale: float = 1.0, progress=None) -> list[LabResult | LabSkip]:
    """Every registered loss (or ``losses``) × settings × targets, plus the ``VARIANTS`` rows; a loss that raises a
    DreamgenError on its first step becomes a ``LabSkip`` with the message as its reason."""
    names = list(losses) if losses is not None else sorted(registry.entries("loss"))
    rows: list[LabResult | LabSkip] = []
    for target in targets:
        for setting in settings:
            for name in names:
                for ov in VARIANTS.get(name, [{}]):
                    try:
                        row = run_lab(name, setting, target, steps, lr, seed, n_particles, ov, guidance_scale)
                    except DreamgenError as e:
                        row = LabSkip(name, setting, target, ov, str(e))
                    if progress is not None:
                        progress(row)
                    rows.append(row)
    return rows
