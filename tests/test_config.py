"""Config composition: layers, dotlist overrides, and clear rejection of unknown keys and names."""

from __future__ import annotations

import pytest

from dreamgen.config import compose, load_config, parse_dotlist, to_yaml
from dreamgen.errors import ConfigError
from dreamgen.losses.core import scheduled


def test_defaults_and_overrides_compose():
    cfg = load_config(None, ["trainer.steps=123", "camera.elevation=[-5,30]"], prompt="a red cube")
    assert cfg.trainer.steps == 123
    assert list(cfg.camera.elevation) == [-5, 30]
    assert cfg.prompt == "a red cube"
    assert cfg.loss.name == "sds"


def test_flag_layer_beats_file_and_dotlist_beats_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  steps: 7\nseed: 5\n")
    cfg = load_config(f, ["seed=9"], **{"trainer.steps": 11, "seed": 6})
    assert cfg.trainer.steps == 11 and cfg.seed == 9


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.stepz=5"])
    msg = str(e.value)
    assert "trainer.stepz" in msg and "steps" in msg and "\n" not in msg


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        load_config(None, [], **{"loss.name": "nope"})
    assert "nope" in str(e.value) and "sds" in str(e.value)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown top-level key 'trainr'"):
        compose({"trainr": {"steps": 1}})


def test_bad_value_type_is_config_error():
    with pytest.raises(ConfigError, match="trainer"):
        load_config(None, ["trainer.steps=many"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_dotlist(["trainer.steps"])


def test_loss_flag_starts_from_that_loss_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  name: esd\n  lambda_entropy: 0.3\n  guidance_scale: 9.0\n")
    cfg = load_config(f, ["loss.t_min=0.1"], **{"loss.name": "vsd"})
    assert cfg.loss.name == "vsd" and not hasattr(cfg.loss, "lambda_entropy")
    assert cfg.loss.guidance_scale == 7.5 and cfg.loss.t_min == 0.1


def test_schedule_fields_take_numbers_or_schedules():
    cfg = load_config(None, ["loss.t_min=0.05"], **{"loss.name": "asyncsd"})  # default is a schedule
    assert cfg.loss.t_min == 0.05
    cfg = load_config(None, ["loss.t_max=[0,0.98,0.5,100]"], **{"loss.name": "sds"})
    assert scheduled(cfg.loss.t_max, 50) == pytest.approx(0.74)


def test_yaml_round_trip():
    cfg = load_config(None, ["trainer.steps=42"], prompt="a blue torus")
    again = compose(__import__("omegaconf").OmegaConf.create(to_yaml(cfg)))
    assert to_yaml(again) == to_yaml(cfg)


@pytest.mark.parametrize("value,step,expected", [
    (0.5, 10, 0.5), ([0, 1.0, 3.0, 10], 5, 2.0), ([0, 1.0, 3.0, 10], -1, 1.0), ([0, 1.0, 3.0, 10], 99, 3.0),
    ([5, 0.98, 0.5, 5], 4, 0.98), ([5, 0.98, 0.5, 5], 5, 0.5),
])
def test_schedule(value, step, expected):
    assert scheduled(value, step) == pytest.approx(expected)


def test_file_naming_a_loss_drops_default_yaml_loss_settings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  name: vsd\n")
    cfg = load_config(f, [])
    assert cfg.loss.name == "vsd" and cfg.loss.guidance_scale == 7.5 and cfg.loss.t_max == [5000, 0.98, 0.5, 5001]


@pytest.mark.parametrize("preset", ["dreamfusion-sd", "prolificdreamer", "esd", "lucid-ism"])
def test_presets_resolve(preset):
    cfg = load_config(preset, [])
    assert cfg.guidance.name == "stable-diffusion"
