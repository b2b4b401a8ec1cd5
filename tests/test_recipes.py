"""docs/recipes.md says what each guidance × loss (or preset) resolves to; every row must be what the config gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamgen.config import _flow, compose_new

DOC = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


def _rows() -> list[list[str]]:
    lines = [ln for ln in DOC.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| guidance")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _describe(cfg) -> list[str]:
    """The row the table should hold for a composed config (all columns but the time)."""
    cam, fine, two = cfg.camera, cfg.fine, "dmtet" in cfg.stages
    res = ", ".join(str(r) for r in cam.resolution)
    if cam.resolution_milestones:
        res += " @ " + ", ".join(str(m) for m in cam.resolution_milestones)
    if two:
        res += f" (fine: {fine.resolution})"
    loss = cfg.loss
    return [res, str(cam.batch_size), f"{cfg.trainer.steps}" + (f" + {fine.steps}" if two else ""),
            str(float(loss.guidance_scale)),
            _flow(loss.t_min) + (f" (fine: {_flow(fine.t_min)})" if two else ""),
            _flow(loss.t_max) + (f" (fine: {_flow(fine.t_max)})" if two else ""), ", ".join(cfg.stages)]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r[0]}-{r[1]}")
def test_recipe_table_row_matches_config_show(row):
    guidance, what = row[0], row[1]
    flags = {"guidance.name": "shapes" if guidance == "prior" else guidance}
    if what.startswith("preset "):
        composed = compose_new(what.split()[1], [], **flags)
    else:
        composed = compose_new(None, [], **flags, **{"loss.name": what})
    assert row[2:9] == _describe(composed.cfg)


def test_the_table_covers_every_recipe_file():
    from dreamgen.config import configs_root

    listed = {(r[0], r[1]) for r in _rows()}
    for family in ("prior", "stable-diffusion"):
        for recipe in (configs_root() / "recipes" / family).iterdir():
            assert (family, recipe.name[:-5]) in listed, f"recipes/{family}/{recipe.name} is not in docs/recipes.md"
