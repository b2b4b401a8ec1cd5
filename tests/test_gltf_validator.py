"""Exported GLBs pass the Khronos glTF-Validator (npm package: `npm ci --prefix tools/gltf-validator`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from export_helpers import PEAK, SmoothBall
from pygltflib import GLTF2

from dreamgen.export import ExportConfig, extract_mesh, extract_textured_mesh, save_mesh

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


def test_exported_glbs_have_no_errors_or_warnings(tmp_path: Path):
    textured = save_mesh(extract_textured_mesh(SmoothBall(), CFG), tmp_path / "textured.glb", "glb")
    coloured = save_mesh(extract_mesh(SmoothBall(), CFG), tmp_path / "coloured.glb", "glb")
    status, reports = validate(textured, coloured)
    assert [r["uri"] for r in reports] == ["textured.glb", "coloured.glb"]
    for report in reports:
        messages = [m for m in report["issues"]["messages"] if m["severity"] <= 1]  # 0 error, 1 warning
        assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, messages
    assert status == 0
    textured_info, coloured_info = reports[0]["info"], reports[1]["info"]
    assert textured_info["hasTextures"] and textured_info["materialCount"] == 1 and textured_info["maxUVs"] == 1
    assert not coloured_info["hasTextures"] and coloured_info["maxAttributes"] == 2  # POSITION, COLOR_0
    assert textured_info["totalTriangleCount"] > 1000


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
