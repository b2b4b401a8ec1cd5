"""The gallery in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) loads every model in
``<model-viewer>``, and the pixels show them drawn and upright. This is the axis test that a Z-up export fails: a
cone exported from the world's exact SDF must be narrower at the top of the screen than at the bottom."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from export_helpers import PEAK, WorldObject, fake_run, taper
from PIL import Image

from dreamgen.export import ExportConfig
from dreamgen.gallery import make_server, write_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed: pip install -e '.[dev]'"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium"),
]

# WebGL without a GPU. Mesa's llvmpipe (through EGL) compiles three.js's shaders, most of this test's time, several
# times faster than SwiftShader; SwiftShader ships inside Chromium, so it is the fallback where Mesa is missing.
# Both are software renderers, which Chromium only uses for WebGL when told to.
BACKENDS = (["--use-angle=gl-egl", "--use-gl=angle", "--ignore-gpu-blocklist"],
            ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
LOADED = """() => Promise.all([...document.querySelectorAll('model-viewer')].map(mv => mv.loaded || new Promise(
    (resolve, reject) => {
        mv.addEventListener('load', resolve);
        mv.addEventListener('error', e => reject(new Error(`${mv.src}: ${e.detail.type}`)));
    })))"""


def launch(playwright):
    """Headless Chromium on the first software backend that gives WebGL 2 (what model-viewer renders with)."""
    for args in BACKENDS:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        if browser.new_page().evaluate("() => !!document.createElement('canvas').getContext('webgl2')"):
            return browser
        browser.close()
    pytest.fail(f"{CHROMIUM} offers no WebGL 2, not even with SwiftShader")


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """A batch folder as ``dreamgen batch`` leaves it, with textured meshes exported from exact world objects.
    (Both textured: one shader program for SwiftShader to compile, which is most of the test's time.)"""
    out = tmp_path_factory.mktemp("gallery")
    cfg = ExportConfig(resolution=40, threshold=PEAK / 2, texture_size=64, turntable_frames=0)
    fake_run(out / "cone", WorldObject("cone", "orange"), "an orange cone", cfg)
    fake_run(out / "cube", WorldObject("cube", "blue"), "a blue cube", cfg)
    items = [{"name": n, "prompt": p, "run_dir": n, "status": "done", "seconds": 1.0, "mesh": f"{n}/mesh.glb"}
             for n, p in (("cone", "an orange cone"), ("cube", "a blue cube"))]
    (out / "manifest.json").write_text(json.dumps({"version": 1, "source": "shapes.txt", "items": items}))
    write_gallery(out)
    return out


def test_every_model_loads_and_the_cone_stands_upright(batch: Path):
    server = make_server(batch)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 800, "height": 600})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            page.evaluate(LOADED)  # rejects (and fails the test) if a model cannot be loaded
            # One capture of the page, cut into the viewers (an element screenshot each would render more frames).
            boxes = {mv.get_attribute("data-run"): mv.bounding_box() for mv in page.query_selector_all("model-viewer")}
            page_rgb = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not errors
    assert sorted(boxes) == ["cone", "cube"]
    for name, box in boxes.items():
        left, top = round(box["x"]), round(box["y"])
        rgb = page_rgb[top : top + round(box["height"]), left : left + round(box["width"])]
        assert rgb.shape[0] > 200 and rgb.shape[1] > 200, box  # on screen
        # The models' colours are saturated; the white background and the grey loading bar are not.
        drawn = rgb.max(axis=-1) - rgb.min(axis=-1) > 60
        assert 0.05 < drawn.mean() < 0.9, name
        colour = rgb[drawn].mean(axis=0)
        if name == "cone":
            assert colour[0] > colour[1] > colour[2]  # orange: the baked texture is on it
            top, bottom = taper(drawn)
            assert top < 0.5 * bottom, (top, bottom)  # apex up: a Z-up file would show the cone on its side
        else:
            assert colour[2] > colour[0] + 50  # blue
