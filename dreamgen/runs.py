"""Run folders and atomic file writes.

A run folder ``outputs/<prompt-slug>-<YYYYmmdd-HHMMSS>/`` holds the resolved ``config.yaml``, ``checkpoints/``,
``previews/``, ``metrics.jsonl`` and the exported mesh. Every file is written to a temporary name in the same folder
and renamed into place, so an interrupted write never leaves a half-written file or destroys an earlier one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from dreamgen.errors import DreamgenError, RunFailure


def write_failure(path: Path, e: OSError) -> RunFailure:
    """A one-line error for a failed write of ``path`` (full disk, read-only or special file system, a file where
    a folder should be, permissions)."""
    what = e.strerror or type(e).__name__
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EROFS: "choose a writable folder with --out"}.get(e.errno, "check the path or choose another --out")
    return RunFailure(f"cannot write {path}: {what}; {hint} (nothing half-written was left)")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure remove it. OS errors
    (a full disk, a read-only folder) become a one-line :class:`RunFailure` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are ordinary files
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(e, OSError):
            raise write_failure(path, e) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the data


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H,W,3] float in [0,1] -> uint8."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(img: torch.Tensor | np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img) if img.dtype != np.uint8 else img).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, img: torch.Tensor | np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(img))


def image_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """rows: list of [N,H,W,3] -> one [rows*H, N*W, 3] image."""
    return torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0)


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:max_len].rstrip("-")) or "run"


def new_run_dir(out_dir: str | Path, prompt: str) -> Path:
    """A fresh ``out_dir/<prompt-slug>-<YYYYmmdd-HHMMSS>[-N]`` with ``checkpoints/`` and ``previews/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / f"{slugify(prompt)}-{stamp}"
    path, i = base, 1
    try:
        while path.exists():  # two runs of one prompt in the same second
            path = base.with_name(f"{base.name}-{i}")
            i += 1
        make_run_folders(path, exist_ok=False)
    except OSError as e:
        raise RunFailure(f"cannot create the run folder {path}: {e.strerror or type(e).__name__}; "
                         f"--out must name a writable folder (it is {out_dir})") from None
    return path


def make_run_folders(path: Path, exist_ok: bool = True) -> None:
    (path / "checkpoints").mkdir(parents=True, exist_ok=exist_ok)
    (path / "previews").mkdir(exist_ok=exist_ok)


class MetricsLog:
    """Append-only JSONL log (one flushed line per record: a crash loses at most the line being written, and a torn
    last line is skipped when reading)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise write_failure(self.path, e) from None

    def _lines(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for ln in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue  # a line torn by a kill during an append
            if isinstance(rec, dict):
                out.append((ln, rec))
        return out

    def truncate_after(self, step: int) -> None:
        """On resume, keep only whole records up to the checkpoint's step, so the log matches the restored state."""
        if not self.path.exists():
            return
        keep = [ln for ln, rec in self._lines() if rec.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def read(self) -> list[dict[str, Any]]:
        return [rec for _, rec in self._lines()] if self.path.exists() else []


def timed(fn: Callable[[], Any], sync: bool) -> tuple[Any, float]:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


EVAL_METRICS = ("silhouette_iou", "volumetric_iou", "colour_error", "janus", "rank1")


def _total_steps(cfg_path: Path) -> int | None:
    """The steps of all a run's stages, as its trainer counts them; None for a config this version cannot read."""
    from dreamgen.config import load_run_config
    from dreamgen.scene import make_stages, total_steps

    try:
        return total_steps(make_stages(load_run_config(cfg_path)))
    except DreamgenError:
        return None


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What a run folder records about its run, for galleries and asset metadata: ``prompt``, ``loss`` (name),
    ``texture_loss`` (the texture stage's, when the run has one), ``seed``, ``step`` / ``steps`` (all stages),
    ``final_loss``, ``seconds`` (the logged step timings, summed) and
    ``eval`` (the main metrics of ``eval.json``, after ``dreamgen eval``). What the folder lacks is None."""
    import yaml

    run_dir = Path(run_dir)
    cfg_path, metrics_path, eval_path = run_dir / "config.yaml", run_dir / "metrics.jsonl", run_dir / "eval.json"
    cfg = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.exists() else {}
    records = MetricsLog(metrics_path).read()
    evaluated = json.loads(eval_path.read_text()) if eval_path.exists() else None
    last = records[-1] if records else {}
    return {
        "prompt": cfg.get("prompt"),
        "loss": (cfg.get("loss") or {}).get("name"),
        "texture_loss": ((cfg.get("texture") or {}).get("loss", "refine")
                         if "texture" in (cfg.get("stages") or []) else None),
        "seed": cfg.get("seed"),
        "step": last.get("step"),
        "steps": _total_steps(cfg_path) if cfg_path.exists() else None,
        "final_loss": last.get("loss"),
        "seconds": sum(v for r in records for k, v in r.items() if k.startswith("time_")) if records else None,
        "eval": {k: evaluated.get(k) for k in EVAL_METRICS} if evaluated is not None else None,
    }
