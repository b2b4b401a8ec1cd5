#!/usr/bin/env python
"""A league grid on one GPU machine inside a fixed budget, for short leases (docs/janus.md):

    python scripts/gpu_league.py janus-tv-gpu --workers 16 --budget 480 --out outputs/league-janus-tv-gpu \\
        --pack results.tar.gz [key=value ...]

Runs ``dreamgen league GRID --executor processes --workers N`` (the runs share the GPU; the embedded prior is small),
stops it with SIGTERM when ``--budget`` seconds are spent (the running items keep their checkpoints; the same command
later resumes them; the league writes the table of what finished: league.md, league.json, contact_sheet.png) and packs the
league folder without checkpoints, meshes, turntables and intermediate previews (the table's inputs: manifest,
eval.json, metrics.jsonl, final previews) plus
``gpu.log`` (nvidia-smi's utilisation and memory every 5 s) and ``mps.log``.

``--mps`` first starts NVIDIA's Multi-Process Service, which lets the workers' kernels run side by side instead of
taking turns; if it does not start or a CUDA call through it fails within a minute, the script goes on without.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from dreamgen.device import usable_cpus

CUDA_PROBE = "import torch; x = torch.ones(1024, device='cuda'); print(torch.cuda.get_device_name(), float(x.sum()))"


def log(msg: str) -> None:
    print(f"[gpu_league {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_mps(folder: Path) -> bool:
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder)}
    (folder / "pipe").mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        log(f"MPS not started: {e}")
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", CUDA_PROBE], env=env, capture_output=True, text=True,
                               timeout=60)
        if probe.returncode == 0:
            os.environ.update(CUDA_MPS_PIPE_DIRECTORY=env["CUDA_MPS_PIPE_DIRECTORY"],
                              CUDA_MPS_LOG_DIRECTORY=env["CUDA_MPS_LOG_DIRECTORY"])
            log(f"MPS on: {probe.stdout.strip()}")
            return True
        log(f"MPS probe failed: {probe.stderr.strip().splitlines()[-1:]}")
    except subprocess.TimeoutExpired:
        log("MPS probe hung for 60 s")
    try:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        log("MPS did not quit")
    return False


def run_league(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "dreamgen", "league", args.grid, "--executor", "processes", "--workers",
           str(args.workers), "--out", str(args.out), *args.overrides]
    log(" ".join(cmd))
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + args.budget
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    if proc.poll() is None:
        log(f"budget of {args.budget:.0f} s spent: SIGTERM (the running items keep their checkpoints)")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log(f"league exited with {proc.returncode}")
    return proc.returncode


def write_table(args: argparse.Namespace, returncode: int) -> None:
    """The league writes its table of finished runs when SIGTERM stops it; after a SIGKILL (it did not stop within a
    minute) or a crash, write it from the manifest."""
    if returncode in (0, 128 + signal.SIGTERM):
        return
    subprocess.run([sys.executable, "-m", "dreamgen", "league", args.grid, "--out", str(args.out), "--table-only"],
                   check=False)


def pack(args: argparse.Namespace, extra: list[Path]) -> None:
    skip = {"checkpoints", "mesh.glb", "mesh.obj", "texture.png", "turntable.gif"}
    with tarfile.open(args.pack, "w:gz") as tar:
        tar.add(args.out, arcname=args.out.name,
                filter=lambda ti: None if Path(ti.name).name in skip or Path(ti.name).name.startswith("step_") else ti)
        for p in extra:
            if p.exists():
                tar.add(p, arcname=p.name)
    log(f"packed {args.pack} ({args.pack.stat().st_size / 1e6:.1f} MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    ap.add_argument("--workers", type=int, default=usable_cpus())
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the runs; then SIGTERM")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--pack", type=Path, default=None, help="tar.gz of the results")
    ap.add_argument("--mps", action="store_true", help="start NVIDIA MPS first (falls back to plain sharing)")
    args = ap.parse_intermixed_args()  # overrides may follow the options
    args.out = args.out or Path("outputs") / f"league-{Path(args.grid).stem}"
    args.out.mkdir(parents=True, exist_ok=True)
    mps_dir = args.out.parent / "mps"
    gpu_log = args.out.parent / "gpu.log"
    smi = None
    if args.mps:
        start_mps(mps_dir)
    try:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used",
                                "--format=csv", "-l", "5"], stdout=gpu_log.open("w"), stderr=subprocess.STDOUT)
    except OSError:
        log("nvidia-smi not found: no gpu.log")
    try:
        write_table(args, run_league(args))
    finally:
        if smi is not None:
            smi.terminate()
        if args.pack is not None:
            pack(args, [gpu_log, mps_dir / "control.log", mps_dir / "server.log"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
