#!/usr/bin/env python
"""The GPU proof of dreamgen, one command on a CUDA machine without network (~6 minutes on one H200):

    python scripts/gpu_check.py --out gpu_check.json [--budget 480]

(a) the tests marked ``cuda`` (tests/test_cuda.py): nerfacc's occupancy-grid renderer against the dense CPU path,
    a bf16 mixed-precision step against fp32, SD fp16 against fp32, tinycudann and nvdiffrast against the torch
    backends where they import;
(b) benchmarks with a Stable-Diffusion-2.1-base-*shaped* random-weight pipeline (no download; the FLOPs are what
    matter): SDS at 64 px, ESD at 64 px and at 512 px, the DMTet stage at 512 px — ms per step by phase, steps/s,
    peak memory, the guidance's share of the step;
(c) a complete two-stage ``dreamgen run`` with that pipeline to a GLB, checked by the Khronos validator when node and
    tools/gltf-validator are there, else by pygltflib and trimesh.

nerfacc's CUDA extension is compiled (JIT, for this GPU's architecture only) in the background while the pipeline is
built. Results are written to the JSON file after every part, so a check that runs out of time keeps what it
measured; parts that no longer fit in ``--budget`` seconds are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a corgi wearing a red scarf"
SMALL_FIELD = ["geometry.grid.n_levels=6", "geometry.grid.log2_hashmap_size=15", "renderer.num_samples=16",
               "trainer.preview_resolution=16", "trainer.preview_views=4"]


class Check:
    def __init__(self, out: Path, budget: float):
        self.out, self.t0, self.budget = out, time.perf_counter(), budget
        self.result: dict = {"parts": {}}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.out.write_text(json.dumps(self.result, indent=2, default=str))

    def part(self, name: str, need_s: float, fn) -> None:
        """Run ``fn()`` (returns a dict) if ``need_s`` seconds are left; record its result, error or skip."""
        if self.left() < need_s:
            self.result["parts"][name] = {"skipped": f"needs ~{need_s:.0f} s, {self.left():.0f} s left"}
            print(f"[{name}] skipped: not enough time left", flush=True)
            self.save()
            return
        t = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            rec = fn()
        except Exception as e:  # one part's failure must not cost the others
            rec = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                   "traceback": traceback.format_exc()[-3000:]}
        rec["seconds"] = round(time.perf_counter() - t, 1)
        self.result["parts"][name] = rec
        print(f"[{name}] {json.dumps({k: v for k, v in rec.items() if k != 'traceback'}, default=str)[:1500]}",
              flush=True)
        self.save()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def start_nerfacc_build() -> subprocess.Popen:
    """Compile nerfacc's CUDA extension for this GPU only, in the background (it is cached for later processes)."""
    from dreamgen.device import usable_cpus

    major, minor = torch.cuda.get_device_capability()
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "MAX_JOBS": str(usable_cpus())}
    code = "import nerfacc.cuda._backend as b; assert b._C is not None, 'nerfacc CUDA extension not built'"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run_cuda_tests(left: float) -> dict:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                          str(ROOT / "tests" / "test_cuda.py")], capture_output=True, text=True, cwd=ROOT,
                         timeout=max(30, left))
    lines = (res.stdout + res.stderr).strip().splitlines()
    return {"returncode": res.returncode, "summary": lines[-1] if lines else "", "output": "\n".join(lines[-40:])}


def bench(pipe: Path, guidance, loss: str, overrides: list[str], steps: int, warmup: int, device: str,
          stage: int = 0) -> dict:
    from dreamgen.benchmark import format_result, measure
    from dreamgen.config import load_config

    cfg = load_config(None, overrides, prompt=PROMPT, device=device,
                      **{"guidance.name": "stable-diffusion", "guidance.pretrained": str(pipe), "loss.name": loss})
    rec = measure(cfg, steps, warmup, guidance=guidance, stage=stage)
    print("   ", format_result(rec), flush=True)
    return rec


def full_run(pipe: Path, work: Path, out: Path, extra: list[str], left: float) -> dict:
    cmd = [sys.executable, "-m", "dreamgen", "run", PROMPT, "--guidance", str(pipe), "--out", str(work),
           "stages=[nerf,dmtet]", "trainer.steps=300", "fine.steps=150", "fine.resolution=256",
           "trainer.preview_every=100", "export.turntable_frames=12", *extra]  # later overrides win
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, left), cwd=work.parent,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rec = {"command": " ".join(cmd[2:]), "returncode": res.returncode, "seconds_total": round(time.perf_counter() - t, 1),
           "log_tail": "\n".join(res.stderr.strip().splitlines()[-12:])}
    runs = [p for p in work.iterdir() if p.is_dir()]
    if res.returncode != 0 or not runs:
        return rec
    run = runs[0]
    glb = run / "mesh.glb"
    rec["glb"] = validate_glb(glb)
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    for stage in ("nerf", "dmtet"):
        recs = [r for r in metrics if r["stage"] == stage][5:]  # past the warm-up
        total = sum(v for r in recs for k, v in r.items() if k.startswith("time_"))
        rec[f"ms_per_step_{stage}"] = round(1000 * total / max(len(recs), 1), 1)
    for name in ("mesh.glb", "turntable.gif"):
        if (run / name).exists():
            shutil.copy(run / name, out.parent / f"gpu_run_{name}")
    shutil.copy(run / "previews" / "final.png", out.parent / "gpu_run_final.png")
    return rec


def validate_glb(path: Path) -> dict:
    import pygltflib
    import trimesh

    gltf = pygltflib.GLTF2().load(str(path))
    mesh = trimesh.load(path, force="mesh")
    rec = {"bytes": path.stat().st_size, "faces": len(mesh.faces), "vertices": len(mesh.vertices),
           "attributes": sorted(k for k, v in vars(gltf.meshes[0].primitives[0].attributes).items() if v is not None),
           "textured": mesh.visual.kind == "texture"}
    validator = ROOT / "tools" / "gltf-validator" / "validate.mjs"
    if shutil.which("node") and (validator.parent / "node_modules").is_dir():
        res = subprocess.run(["node", str(validator), str(path)], capture_output=True, text=True, timeout=120)
        try:
            issues = json.loads(res.stdout)[0]["issues"]
            rec["khronos_validator"] = {k: issues[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}
        except (ValueError, LookupError):
            rec["khronos_validator"] = (res.stdout or res.stderr).strip()[-600:]
    else:
        rec["khronos_validator"] = "not run (node or tools/gltf-validator/node_modules missing on this machine)"
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds: parts that no longer fit are skipped")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="a tiny pipeline, small renders, few steps, any device: "
                                                         "checks this script, measures nothing")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("scripts/gpu_check.py needs a CUDA device (--smoke runs it anywhere, measuring nothing)")
    from dreamgen.testing.tiny_sd import build_tiny_pipeline

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(out, args.budget)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        check.result["machine"] = {"gpu": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                                   "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
                                   "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    check.save()
    # Render sizes and step counts of the benchmarks (--smoke: tiny ones, to check the script itself).
    lo, hi, n = (32, 32, 2) if args.smoke else (64, 512, 1)
    small = ["camera.resolution=[32]", *SMALL_FIELD] if args.smoke else []

    build = start_nerfacc_build() if device == "cuda" else None
    pipe = work / "sd21-base-shaped"
    check.part("pipeline", 60, lambda: {"path": str(build_tiny_pipeline(pipe, preset="tiny" if args.smoke
                                                                        else "sd21-base"))})
    nerfacc_ok = False
    if build is not None:
        try:
            log, _ = build.communicate(timeout=max(10, check.left() - 300))
            nerfacc_ok = build.returncode == 0
        except subprocess.TimeoutExpired:
            build.kill()
            log = "timed out"
        check.result["nerfacc_cuda"] = {"built": nerfacc_ok, "log_tail": (log or "")[-800:]}
        check.save()
    base = [*small, *([] if nerfacc_ok else ["renderer.occupancy_grid=false"])]

    from dreamgen.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance

    guidance = StableDiffusionGuidance(StableDiffusionConfig(pretrained=str(pipe)), device=device)
    at = lambda res: [f"camera.resolution=[{res}]", "camera.resolution_milestones=[]"]  # noqa: E731
    check.part("bench_sds_64", 40, lambda: bench(pipe, guidance, "sds", [*base, *at(lo)], 30 // n, 5 // n, device))
    check.part("bench_esd_64", 60, lambda: bench(pipe, guidance, "esd", [*base, *at(lo)], 20 // n, 4 // n, device))
    if device == "cuda":
        check.part("cuda_tests", 90, lambda: run_cuda_tests(check.left() - 150))
    check.part("bench_esd_512", 70, lambda: bench(pipe, guidance, "esd", [*base, *at(hi)], 6 // n, 2 // n, device))
    check.part("bench_dmtet_512", 50, lambda: bench(pipe, guidance, "sds", [*base, "stages=[nerf,dmtet]",
                                                                              f"fine.resolution={hi}",
                                                                              "fine.geometry.grid_resolution="
                                                                              f"{16 if args.smoke else 128}"],
                                                    10 // n, 3 // n, device, stage=1))
    del guidance
    if device == "cuda":
        torch.cuda.empty_cache()
    run_dir = work / "runs"
    run_dir.mkdir(exist_ok=True)
    steps = ["trainer.steps=8", "fine.steps=7", "fine.resolution=32", "fine.geometry.grid_resolution=16",
             "trainer.preview_every=4", "export.resolution=48", "export.texture_size=128"] if args.smoke else []
    check.part("two_stage_run", 100, lambda: full_run(pipe, run_dir, out, [*base, *steps, f"device={device}"],
                                                      check.left() - 5))
    print(f"written {out} after {check.result['elapsed_s']} s", flush=True)


if __name__ == "__main__":
    main()
