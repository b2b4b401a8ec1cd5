"""Config composition: layers (base, profile, recipe, preset, flags, overrides), the named-section rule, validation
with one-line errors, provenance for --explain, and the round trip through a run folder's config.yaml."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dreamgen import config as config_module
from dreamgen.config import (Layer, compose_layers, compose_new, explain, load_config, load_run_config,
                             parse_dotlist, to_yaml)
from dreamgen.errors import ConfigError, PromptError
from dreamgen.schema import scheduled

SD = {"guidance.name": "stable-diffusion"}


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
        load_config(None, ["trainr.steps=1"])


def test_bad_value_type_is_config_error():
    with pytest.raises(ConfigError, match="trainer"):
        load_config(None, ["trainer.steps=many"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_dotlist(["trainer.steps"])


def test_naming_the_default_loss_changes_nothing():
    assert to_yaml(load_config(None, [], **{"loss.name": "sds"})) == to_yaml(load_config())
    assert load_config(None, [], **{"loss.name": "sds"}).loss.guidance_scale == 20.0  # the prior's sds recipe


def test_a_layer_naming_another_loss_contributes_nothing_to_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  name: esd\n  lambda_entropy: 0.3\n  guidance_scale: 9.0\n")
    cfg = load_config(f, ["loss.t_min=0.1"], **{"loss.name": "vsd"})
    assert cfg.loss.name == "vsd" and not hasattr(cfg.loss, "lambda_entropy")
    assert cfg.loss.guidance_scale == 7.5 and cfg.loss.t_min == 0.1
    cfg = load_config(f, [], **{"loss.name": "esd"})  # the same component: the file's settings stay
    assert cfg.loss.lambda_entropy == 0.3 and cfg.loss.guidance_scale == 9.0


def test_schedule_fields_take_numbers_or_schedules():
    cfg = load_config(None, ["loss.t_min=0.05"], **{"loss.name": "asyncsd"})  # default is a schedule
    assert cfg.loss.t_min == 0.05
    cfg = load_config(None, ["loss.t_max=[0,0.98,0.5,100]"], **{"loss.name": "sds"})
    assert scheduled(cfg.loss.t_max, 50) == pytest.approx(0.74)


def test_run_folder_round_trip(tmp_path):
    cfg = load_config(None, ["trainer.steps=42"], prompt="a blue torus")
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert to_yaml(load_run_config(tmp_path / "config.yaml")) == to_yaml(cfg)
    assert load_run_config(tmp_path / "config.yaml", ["trainer.steps=50"]).trainer.steps == 50


@pytest.mark.parametrize("value,step,expected", [
    (0.5, 10, 0.5), ([0, 1.0, 3.0, 10], 5, 2.0), ([0, 1.0, 3.0, 10], -1, 1.0), ([0, 1.0, 3.0, 10], 99, 3.0),
    ([5, 0.98, 0.5, 5], 4, 0.98), ([5, 0.98, 0.5, 5], 5, 0.5),
])
def test_schedule(value, step, expected):
    assert scheduled(value, step) == pytest.approx(expected)


@pytest.mark.parametrize("preset", ["dreamfusion-sd", "prolificdreamer", "esd", "lucid-ism", "magic3d"])
def test_presets_resolve_from_package_data(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # presets are package data, not files beside the checkout
    cfg = load_config(preset, [])
    assert cfg.guidance.name == "stable-diffusion"


def test_missing_preset_or_file_is_an_error_listing_presets():
    with pytest.raises(ConfigError, match="no config file or preset 'dreamfusion'; presets: .*dreamfusion-sd"):
        load_config("dreamfusion", [])
    with pytest.raises(ConfigError, match="config file not found: /no/such.yaml"):
        load_config("/no/such.yaml", [])


def test_recipes_follow_guidance_and_loss():
    esd = load_config(None, [], **SD, **{"loss.name": "esd"})
    assert (esd.loss.guidance_scale, esd.loss.lambda_entropy, esd.trainer.steps) == (7.5, 0.5, 25000)
    assert list(esd.camera.resolution) == [64, 512] and list(esd.camera.resolution_milestones) == [5000]
    sds = load_config(None, [], **SD)
    assert (sds.loss.guidance_scale, sds.trainer.steps, list(sds.camera.resolution)) == (100.0, 10000, [64])
    assert sds.trainer.lambda_orient == [0, 10.0, 1000.0, 5000] and sds.geometry.grid.n_levels == 16
    prior = load_config()
    assert (prior.loss.guidance_scale, list(prior.camera.resolution), prior.geometry.grid.n_levels) == (20.0, [32], 6)


def test_auto_resolves_when_composed(monkeypatch):
    cfg = compose_new()
    assert cfg.cfg.guidance.name == "shapes" and "no CUDA" in cfg.sources["guidance.name"]
    tv = compose_new(None, ["prompt=a cyan tv"])  # an object only the v2 weights know
    assert tv.cfg.guidance.name == "shapes-cam" and list(tv.cfg.camera.resolution) == [64]
    monkeypatch.setattr(config_module, "resolve_auto_guidance",
                        lambda source, device, prompt: ("stable-diffusion", f"CUDA available and {source} found"))
    cfg = compose_new(None, ["guidance.pretrained=/some/sd"])
    assert cfg.cfg.guidance.name == "stable-diffusion" and cfg.cfg.guidance.pretrained == "/some/sd"
    assert cfg.cfg.trainer.steps == 10000  # the stable-diffusion profile and sds recipe were chosen


def test_auto_applies_the_world_objects_own_settings():
    cube = compose_new(None, [], prompt="a red cube")
    assert cube.cfg.geometry.blob_radius == 0.5 and cube.sources["geometry.blob_radius"] == "object cube"
    sphere = compose_new(None, [], prompt="a blue sphere")  # no settings of its own: the profile's
    assert sphere.cfg.geometry.blob_radius == 0.25 and sphere.sources["geometry.blob_radius"] == "profile prior"
    cone = compose_new(None, [], prompt="an orange cone")
    assert cone.cfg.loss.name == "ism" and cone.sources["loss.name"] == "object cone"
    assert cone.cfg.loss.guidance_scale == 7.5  # ISM's own default, not the SDS recipe's 20
    cyl = compose_new(None, [], prompt="a green cylinder")
    assert cyl.cfg.guidance.name == "shapes-cam" and list(cyl.cfg.camera.resolution) == [64]
    assert cyl.sources["guidance.name"].startswith("auto: ")  # the choice is still auto's, read from the object
    assert cyl.object_settings == "dreamgen/configs/objects/cylinder.yaml: guidance.name=shapes-cam"
    assert cube.object_settings == "dreamgen/configs/objects/cube.yaml: geometry.blob_radius=0.5"
    assert sphere.object_settings == ""
    tv = compose_new(None, [], prompt="a cyan tv")  # auto's shapes-cam, with the object's CFG over the recipe's
    assert tv.cfg.guidance.name == "shapes-cam" and tv.cfg.loss.name == "sds"
    assert tv.cfg.loss.guidance_scale == 7.5 and tv.sources["loss.guidance_scale"] == "object tv"
    assert tv.cfg.guidance.weights == "v2-pose" and tv.sources["guidance.weights"] == "object tv"
    assert tv.object_settings == "dreamgen/configs/objects/tv.yaml: loss.guidance_scale=7.5, guidance.weights=v2-pose"
    house = compose_new(None, [], prompt="a yellow house")  # a guidance, a loss setting and a stage setting at once
    assert (house.cfg.guidance.name, house.cfg.loss.guidance_scale, house.cfg.fine.train_texture) == ("shapes-cam", 7.5, False)
    assert house.cfg.guidance.weights == "v2-pose"  # the shape's teacher; the texture stage paints on v2
    assert list(house.cfg.stages) == ["nerf", "dmtet", "texture"] and house.cfg.texture.weights == "v2"
    assert house.cfg.export.closing_radius == 0.06 and house.sources["export.closing_radius"] == "object house"
    assert list(house.cfg.camera.resolution) == [64] and house.cfg.geometry.blob_radius == 0.25


def test_named_choices_override_the_world_objects_settings():
    cone = compose_new(None, [], prompt="an orange cone", **{"loss.name": "sds"})
    assert cone.cfg.loss.name == "sds" and cone.sources["loss.guidance_scale"] == "recipe prior/sds"
    assert cone.object_settings == ""  # nothing of the cone's own settings applied
    cube = compose_new(None, [], prompt="a red cube", **{"guidance.name": "shapes"})  # not auto: the plain profile
    assert cube.cfg.geometry.blob_radius == 0.25
    cyl = compose_new(None, ["geometry.blob_radius=0.3"], prompt="a green cylinder", **{"guidance.name": "shapes"})
    assert cyl.cfg.guidance.name == "shapes" and list(cyl.cfg.camera.resolution) == [32]
    assert cyl.cfg.geometry.blob_radius == 0.3
    tv = compose_new(None, [], prompt="a cyan tv", **{"guidance.name": "shapes-cam"})  # named, not auto's choice
    assert tv.cfg.loss.guidance_scale == 20.0 and tv.sources["loss.guidance_scale"] == "recipe prior/sds"
    assert tv.cfg.guidance.weights == "v2"  # and the guidance's own weights
    tv = compose_new(None, ["guidance.weights=v2"], prompt="a cyan tv")  # auto's choice, the object's weights overridden
    assert tv.cfg.guidance.weights == "v2" and tv.cfg.loss.guidance_scale == 7.5


def test_every_object_settings_file_names_a_world_object_and_composes():
    from dreamgen.prior.io import load_spec
    from dreamgen.world.captions import caption

    files = sorted(p.name[:-5] for p in (config_module.configs_root() / "objects").iterdir()
                   if p.name.endswith(".yaml"))
    assert files, "no object settings shipped"
    for shape in files:
        assert shape in load_spec("v2").shapes, f"objects/{shape}.yaml names no object of the world"
        composed = compose_new(None, [], prompt=caption("red", shape))
        assert f"object {shape}" in composed.sources.values() or composed.cfg.guidance.name != "shapes"


def test_explain_names_the_layer_of_each_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  checkpoint_every: 7\n")
    text = explain(compose_new(f, ["seed=4"], **{"trainer.steps": 9}))
    sources, path = {}, []
    for ln in text.splitlines():  # rebuild dotted keys from the indentation
        depth = (len(ln) - len(ln.lstrip())) // 2
        key = ln.strip().split(":")[0]
        path = path[:depth] + [key]
        if "#" in ln:
            sources[".".join(path)] = ln.split("#")[-1].strip()
    assert sources["seed"] == "override" and sources["trainer.steps"] == "flag"
    assert sources["trainer.checkpoint_every"] == f"config {f}" and sources["fine.steps"] == "profile prior"
    assert sources["loss.guidance_scale"] == "recipe prior/sds" and sources["geometry.grid.n_levels"] == "profile prior"
    assert sources["fine.lr"] == "default"
    assert sources["trainer.lr"] == "default" and sources["guidance.name"].startswith("auto: no CUDA")


@pytest.mark.parametrize("override,expected", [
    ("trainer.steps=0", "trainer.steps=0: must be ≥ 1"),
    ("trainer.steps=-5", "trainer.steps=-5: must be ≥ 1"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every=0: must be ≥ 1"),
    ("renderer.num_samples=0", "renderer.num_samples=0: must be ≥ 1"),
    ("camera.batch_size=0", "camera.batch_size=0: must be ≥ 1"),
    ("camera.resolution=[0]", "camera.resolution=[0]: must be > 0 (each element)"),
    ("camera.resolution=[32,64]", "camera.resolution has 2 entries and camera.resolution_milestones 0"),
    ("renderer.albedo_only_prob=1.5", "renderer.albedo_only_prob=1.5: must be in [0, 1]"),
    ("renderer.textureless_prob=[300,1.2,0,300]", "renderer.textureless_prob=[300, 1.2, 0, 300]: must be in [0, 1]"),
    ("renderer.textureless_prob=[300,0.95,0,300]",
     "renderer.albedo_only_prob + renderer.textureless_prob = 1.05 at step 0: must be ≤ 1"),
    ("loss.t_min=0.9", "t_min must stay below t_max"),
    ("loss.t_max=[0,0.98,0.01,100]", "t_min must stay below t_max (at step 100"),
    ("device=tpu", "device='tpu': must be auto, cpu, cuda or cuda:N"),
    ("geometry.name=dmtet", "geometry.name=dmtet: the coarse stage renders a density field"),
    ("background.kind=sky", "background.kind='sky': must be one of solid, mlp"),
    ("trainer.lambda_orient=[0,1,-1,10]", "trainer.lambda_orient=[0, 1, -1, 10]: must be ≥ 0"),
    ("prompt=${oc.env:DREAMGEN_SURELY_UNSET}", "cannot resolve prompt:"),
    ("prompt=${nope:x}", "Unsupported interpolation type nope"),
])
def test_numbers_are_validated_with_one_line(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_resolution_must_fit_the_latent_stride():
    with pytest.raises(ConfigError, match="resolutions must be multiples of 8"):
        load_config(None, ["camera.resolution=[60]"], **SD)
    assert load_config(None, ["camera.resolution=[60]"]).camera.resolution == [60]  # a pixel-space prior


def test_prompts_are_checked_when_composed():
    with pytest.raises(PromptError, match="unknown word 'corgi' for the embedded prior"):
        load_config(None, [], prompt="a corgi")
    with pytest.raises(ConfigError, match="the prompt is 1000001 characters long; at most 1000"):
        load_config(None, [], prompt="a" * 1_000_001, **SD)
    assert load_config(None, [], prompt="a corgi", **SD).prompt == "a corgi"


def test_layers_compose_in_order():
    layers = [Layer("one", OmegaConf.create({"seed": 1, "trainer": {"steps": 5}})),
              Layer("two", OmegaConf.create({"seed": 2}))]
    composed = compose_layers(layers)
    assert composed.cfg.seed == 2 and composed.cfg.trainer.steps == 5
    assert composed.sources["seed"] == "two" and composed.sources["trainer.steps"] == "one"


@pytest.mark.parametrize("missing, guidance", [("base.yaml", "shapes"), ("profiles/prior.yaml", "shapes"),
                                               ("profiles/prior-64px.yaml", "shapes-cam")])
def test_a_missing_packaged_layer_is_an_error_not_a_silent_default(monkeypatch, missing, guidance):
    real = config_module._packaged
    monkeypatch.setattr(config_module, "_packaged", lambda rel: None if rel == missing else real(rel))
    with pytest.raises(ConfigError, match=f"lacks its config file dreamgen/configs/{missing}; reinstall it"):
        load_config(None, [], **{"guidance.name": guidance})
