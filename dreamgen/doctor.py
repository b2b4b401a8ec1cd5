"""``dreamgen doctor``: one screen of what this machine will use, before a run finds out the hard way.

torch and CUDA versions, the GPU and its free memory, which backend each part picks (hash grid, empty-space
skipping, rasteriser), whether the Stable Diffusion weights of the default recipe are on this machine and whether
Hugging Face offline mode is on, what ``guidance: auto`` resolves to, and the expected peak memory of a recipe.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from typing import Any

import torch

from dreamgen.config import compose_new, family, job_flags

# Peak GPU memory measured by scripts/gpu_check.py on an H200 with SD-2.1-base-shaped weights (docs/benchmarks.md),
# keyed by (loss kind, render side); VSD and ESD share their LoRA machinery. Other recipes scale from these.
MEASURED_PEAK_GB = {("sds", 64): 7.3, ("lora", 64): 10.3, ("dmtet", 512): 7.3}
LORA_LOSSES = ("vsd", "esd", "asd")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def expected_peak(cfg) -> str:
    """Expected peak memory of a composed config, from the GPU measurements (or the CPU default's size)."""
    if family(cfg.guidance.name) == "prior":
        return "≈ 1 GB of RAM (the embedded prior; 0.65 GB measured for the default run)"
    kind = "lora" if cfg.loss.name in LORA_LOSSES else "sds"
    top = max(cfg.camera.resolution)
    base = MEASURED_PEAK_GB[(kind, 64)]
    note = f"{base:.1f} GB measured at 64 px on an H200 with SD-2.1-base shapes"
    if top > 64:
        note += (f"; at {top} px more: the renderer recomputes its chunks in backward (renderer.checkpoint_rays), "
                 "so it grows with renderer.chunk rather than the image (not measured)")
    if "dmtet" in cfg.stages:
        note += f"; DMTet stage at 512 px: {MEASURED_PEAK_GB[('dmtet', 512)]:.1f} GB measured"
    return note


def report(config: str | None = None, loss: str | None = None, guidance: str | None = None) -> list[tuple[str, str]]:
    """(topic, finding) rows."""
    rows: list[tuple[str, str]] = [
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
    ]
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of {total / 2**30:.1f} GB "
                                     "free"))
    else:
        rows.append(("GPU", "none: runs use the CPU and the embedded prior"))
    tcnn = _importable("tinycudann")
    rows.append(("hash grid", "tinycudann" if cuda and tcnn else
                 "torch" + ("" if tcnn else " (tinycudann not installed: optional, faster on a GPU)")))
    nvcc = shutil.which("nvcc")
    rows.append(("empty-space skipping", "nerfacc occupancy grid (CUDA; its extension compiles on first use"
                 + (", nvcc found" if nvcc else ": nvcc NOT found, install the CUDA toolkit")
                 + "; renderer.occupancy_backend=torch skips the build)" if cuda
                 else "torch empty-space grid (CPU)"))
    nvdr = _importable("nvdiffrast")
    rows.append(("rasteriser (DMTet)", "nvdiffrast" if cuda and nvdr else
                 "torch" + ("" if nvdr else " (nvdiffrast not installed: optional, faster on a GPU)")))
    from dreamgen.guidance.auto import AutoGuidanceConfig
    from dreamgen.guidance.stable_diffusion import _hub_cache_dir, weights_available

    source = AutoGuidanceConfig.pretrained
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    rows.append(("Stable Diffusion", f"{source}: " + ("in the Hugging Face cache" if weights_available(source) else
                                                      "not in the Hugging Face cache") + f" ({_hub_cache_dir()})"))
    rows.append(("offline mode", "on (HF_HUB_OFFLINE)" if offline else "off: a missing model is downloaded"))
    composed = compose_new(config, [], **job_flags(loss, guidance))
    cfg = composed.cfg
    rows.append(("this run would use", f"guidance {cfg.guidance.name}"
                 + (f" ({composed.guidance_choice})" if composed.guidance_choice else "")
                 + f", loss {cfg.loss.name}, {cfg.trainer.steps} steps at "
                 + ", ".join(str(r) for r in cfg.camera.resolution) + " px, device " + cfg.device))
    rows.append(("expected peak memory", expected_peak(cfg)))
    return rows


def format_report(rows: list[tuple[str, Any]]) -> str:
    width = max(len(topic) for topic, _ in rows)
    return "\n".join(f"{topic:<{width}}  {finding}" for topic, finding in rows)
