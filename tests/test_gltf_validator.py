"""Exported GLBs pass the Khronos glTF-Validator (npm package: `npm ci --prefix tools/gltf-validator`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from export_helpers import PEAK, SmoothBall
from pygltflib import GLTF2

from dreamgen.export import ExportConfig, export_mesh, extract_textured_mesh, save_mesh

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gltf-validator"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node (Node.js) is not on PATH"),
    pytest.mark.skipif(
        not (TOOL / "node_modules" / "gltf-validator").is_dir(),
        reason=f"gltf-validator is not installed: run `npm ci --prefix {TOOL}`",
    ),
]

CFG = ExportConfig(resolution=32, threshold=PEAK / 2, texture_size=64, turntable_frames=0)


def validate(*paths: Path) -> tuple[int, list[dict]]:
    proc = subprocess.run([NODE, str(TOOL / "validate.mjs"), *map(str, paths)], capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def test_exported_glbs_have_no_errors_warnings_or_hints(tmp_path: Path):
    metadata = {"prompt": "a smooth ball", "loss": "sds", "seed": 3, "final_loss": float("nan")}
    textured = export_mesh(SmoothBall(), CFG, tmp_path, stem="textured", metadata=metadata)["glb"]
    coloured = export_mesh(SmoothBall(), replace(CFG, texture=False), tmp_path, stem="coloured")["glb"]
    status, reports = validate(textured, coloured)
    assert [r["uri"] for r in reports] == ["textured.glb", "coloured.glb"]
    for report in reports:
        issues = report["issues"]
        # Hints included: without bufferView targets the validator hints at each view.
        assert (issues["numErrors"], issues["numWarnings"], issues["numHints"]) == (0, 0, 0), issues["messages"]
    assert status == 0
    textured_info, coloured_info = reports[0]["info"], reports[1]["info"]
    assert textured_info["hasTextures"] and textured_info["materialCount"] == 1 and textured_info["maxUVs"] == 1
    assert textured_info["maxAttributes"] == 3  # POSITION, NORMAL, TEXCOORD_0
    assert not coloured_info["hasTextures"] and coloured_info["maxAttributes"] == 3  # POSITION, NORMAL, COLOR_0
    assert textured_info["totalTriangleCount"] > 1000
    extras = GLTF2().load(str(textured)).asset.extras
    assert extras["prompt"] == "a smooth ball" and extras["seed"] == 3 and extras["final_loss"] is None


def test_validator_reports_a_broken_texture_reference(tmp_path: Path):
    # The negative control: the same export with its material pointing at a texture that does not exist.
    path = save_mesh(extract_textured_mesh(SmoothBall(), CFG), tmp_path / "broken.glb", "glb")
    gltf = GLTF2().load(str(path))
    gltf.materials[0].pbrMetallicRoughness.baseColorTexture.index = 7
    gltf.save_binary(str(path))
    status, reports = validate(path)
    assert status == 1
    assert reports[0]["issues"]["numErrors"] >= 1
    assert any("baseColorTexture" in m["pointer"] for m in reports[0]["issues"]["messages"])
