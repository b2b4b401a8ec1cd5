"""Timing optimisation steps of a config: ms per phase, steps/s, peak memory, the guidance's share of the step.

Used by ``scripts/bench_steps.py`` (one config, any device) and ``scripts/gpu_check.py`` (the GPU proof). Phases
(see :mod:`dreamgen.train`): render, encode (the guidance's image encoder: the VAE for Stable Diffusion), loss (the
guidance's denoiser calls and the loss, including a VSD/ESD LoRA update), backward (through the encoder and the
renderer), optimizer.
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dreamgen.train import phase_summary


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(cfg, steps: int, warmup: int = 2, guidance=None, run_dir: Path | None = None,
            stage: int = 0) -> dict[str, Any]:
    """Run ``warmup + steps`` steps of ``cfg`` (in stage ``stage``: earlier stages are handed off from their
    initial geometry first) and summarise the last ``steps``."""
    from dreamgen.session import Session

    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="dreamgen-bench-"))
    cfg.trainer.preview_every, cfg.trainer.checkpoint_every, cfg.trainer.progress = 0, 10**9, False
    trainer = Session.new(cfg, guidance=guidance, run_dir=run_dir).trainer
    for index in range(1, stage + 1):
        trainer.step = trainer.stage_end(index - 1)
        trainer.enter_stage(index)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    records = []
    t0 = time.perf_counter()
    for _ in range(warmup + steps):
        records.append(trainer.train_step())
    wall = time.perf_counter() - t0
    phases = phase_summary(records, skip=warmup)
    guidance_s = phases.get("encode", 0.0) + phases.get("loss", 0.0)
    return {
        "prompt": cfg.prompt, "loss": cfg.loss.name, "guidance": cfg.guidance.name, "stage": trainer.scene.stage.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
        "resolution": trainer.sampler.resolution(trainer.step), "batch": cfg.camera.batch_size,
        "samples_per_ray": cfg.renderer.num_samples,
        "ms_per_phase": {k: v * 1000 for k, v in phases.items() if k not in ("total", "steps_per_s")},
        "ms_per_step": phases["total"] * 1000, "steps_per_s": phases["steps_per_s"],
        "guidance_share": guidance_s / phases["total"] if phases["total"] > 0 else 0.0,
        "wall_s": wall, "peak_memory_mb": peak_memory_mb(device), "torch": torch.__version__,
    }


def format_result(result: dict[str, Any]) -> str:
    phases = " ".join(f"{k} {v:.1f}" for k, v in result["ms_per_phase"].items())
    return (f"{result['loss']} @ {result['resolution']} px ({result['stage']}, {result['device_name']}): "
            f"{result['ms_per_step']:.1f} ms/step = {result['steps_per_s']:.2f} steps/s [{phases} ms], guidance "
            f"{100 * result['guidance_share']:.0f} %, peak {result['peak_memory_mb']:.0f} MB")
