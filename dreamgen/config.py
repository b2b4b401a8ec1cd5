"""Run configuration: typed dataclasses per component, composed from labelled layers, validated, explained.

Layers, later wins (each has a label that ``dreamgen config show --explain`` prints beside the values it set):

    default   the dataclass defaults of each component
    base      dreamgen/configs/base.yaml (neutral)
    profile   dreamgen/configs/profiles/<family>.yaml: how this guidance family is run (prior | stable-diffusion)
              then profiles/<overlay>.yaml where the guidance names one: what it changes in its family's profile
              (the embedded prior's 64-px modes render at 64 px)
    recipe    dreamgen/configs/recipes/<family>/<loss>.yaml: the loss as its paper runs it with that family
    object    dreamgen/configs/objects/<object>.yaml, when ``guidance: auto`` chose the embedded prior for a prompt
              naming that object of its world: the settings the league measured best for it (docs/league.md); its
              ``loss.name`` applies when no later layer names a loss, its ``guidance.name`` picks the prior
    preset    --config NAME (dreamgen/configs/presets/NAME.yaml) or --config FILE
    flag      --loss, --steps, --seed, --guidance, --out, ...
    override  trailing key=value arguments (OmegaConf dotlist)

The guidance family and the loss are decided first, from the names the layers give, because they select the profile
and the recipe: ``guidance: auto`` resolves here to ``stable-diffusion`` when CUDA is usable and the SD weights are on
this machine (a folder, or the Hugging Face cache), else to the embedded prior ``shapes``; the run's ``config.yaml``
records the concrete choice.

Named sections (``guidance``, ``loss``, ``geometry``) hold the component that the last layer naming one chose. A layer
that names a *different* component for a section contributes nothing to it (its settings were meant for that other
component); a layer naming the same component, or none, adds to it. So ``--loss sds`` on the default changes nothing,
and ``--loss esd`` on a VSD preset starts ESD from its recipe.

Every field is validated: unknown keys (a misspelt key names the valid ones), types, and the ranges declared with
:func:`dreamgen.schema.bounded`; errors are one-line :class:`ConfigError`\\ s naming the key, the value and the range.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dreamgen import registry, schema
from dreamgen.errors import ConfigError

NAMED_SECTIONS = ("guidance", "loss", "geometry")
DEFAULT_NAMES = {"guidance": "auto", "loss": "sds", "geometry": "hashgrid-nerf"}
TOP_LEVEL_SCALARS = ("prompt", "seed", "device", "out_dir", "stages", "source_run")
VALID_STAGES = (["nerf"], ["nerf", "dmtet"], ["nerf", "dmtet", "texture"])
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_PROMPT = 1000  # characters: CLIP reads 77 tokens; a longer prompt is a mistake (a file pasted by accident)


def configs_root() -> Any:
    """The packaged ``dreamgen/configs`` folder (an ``importlib.resources`` Traversable: works from a wheel)."""
    return importlib.resources.files("dreamgen") / "configs"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in (configs_root() / "presets").iterdir() if p.name.endswith(".yaml"))


def _fixed_sections() -> dict[str, type]:
    # Imported here: each component module owns its config dataclass.
    from dreamgen.cameras import CameraConfig
    from dreamgen.export.mesh import ExportConfig
    from dreamgen.prompts import PromptConfig
    from dreamgen.render.background import BackgroundConfig
    from dreamgen.render.volume import RendererConfig
    from dreamgen.scene import FineStageConfig, TextureStageConfig
    from dreamgen.train import TrainerConfig

    return {
        "camera": CameraConfig,
        "renderer": RendererConfig,
        "background": BackgroundConfig,
        "prompts": PromptConfig,
        "trainer": TrainerConfig,
        "fine": FineStageConfig,
        "texture": TextureStageConfig,
        "export": ExportConfig,
    }


@dataclass
class RunConfig:
    prompt: str = ""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "outputs"
    stages: list[str] = field(default_factory=lambda: ["nerf"])
    source_run: str = ""  # editing: the run folder whose scene is the starting point and the loss's source
    guidance: Any = None
    loss: Any = None
    geometry: Any = None
    camera: Any = None
    renderer: Any = None
    background: Any = None
    prompts: Any = None
    trainer: Any = None
    fine: Any = None
    texture: Any = None
    export: Any = None


@dataclass
class Layer:
    label: str  # what --explain prints: "base", "profile prior", "recipe prior/sds", "preset esd", "flag", ...
    data: DictConfig


@dataclass
class Composed:
    """A validated config and, per dotted key, the label of the layer that set it (absent: dataclass default)."""

    cfg: RunConfig
    sources: dict[str, str]
    guidance_choice: str = ""  # how auto was resolved, when it was
    object_settings: str = ""  # the world object's own settings file and what it set, when auto applied one


# ---- reading layers ------------------------------------------------------------------------------------------------
def _parse_yaml(text: str, where: str) -> DictConfig:
    try:
        cfg = OmegaConf.create(text)
    except Exception as e:  # yaml errors carry multi-line messages
        raise ConfigError(f"cannot parse {where}: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config {where} must hold a mapping at top level")
    return cfg


def _packaged(rel: str) -> DictConfig | None:
    res = configs_root().joinpath(*rel.split("/"))
    return _parse_yaml(res.read_text(encoding="utf-8"), f"dreamgen/configs/{rel}") if res.is_file() else None


def load_yaml(path: str | Path) -> DictConfig:
    """A config file, or a preset name (``dreamgen/configs/presets/NAME.yaml``)."""
    p = Path(path)
    if not p.exists() and not p.suffix and "/" not in str(path):
        preset = _packaged(f"presets/{path}.yaml")
        if preset is None:
            raise ConfigError(f"no config file or preset {str(path)!r}; presets: {', '.join(preset_names())}")
        return preset
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}" + ("" if p.suffix else
                                                              f" (presets: {', '.join(preset_names())})"))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    return _parse_yaml(text, str(p))


def parse_dotlist(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. trainer.steps=2000)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {str(e).splitlines()[0]}") from None


def flag_layer(flags: dict[str, Any]) -> DictConfig:
    """``{"loss.name": "esd", "seed": 3, "trainer.steps": None}`` -> a nested layer (None: flag not given)."""
    node: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        cur = node
        *parents, leaf = dotted.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    return OmegaConf.create(node)


def guidance_flags(guidance: str | None) -> dict[str, Any]:
    """``--guidance`` takes a registered name, or a diffusers pipeline folder / hub id (→ stable-diffusion)."""
    if guidance is None:
        return {}
    if guidance in registry.entries("guidance"):
        return {"guidance.name": guidance}
    return {"guidance.name": "stable-diffusion", "guidance.pretrained": guidance}


def job_flags(loss: str | None = None, guidance: str | None = None, steps: int | None = None,
              seed: int | None = None) -> dict[str, Any]:
    """The config flags of the job options ``run``, ``batch`` and ``config show`` share (None: not given)."""
    return {"loss.name": loss, "trainer.steps": steps, "seed": seed, **guidance_flags(guidance)}


# ---- composing -----------------------------------------------------------------------------------------------------
def _resolved(layer: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(layer, key, throw_on_missing=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve {key}: {str(e).splitlines()[0]}") from None


def _named(layers: list[Layer], section: str) -> str:
    names = [n for n in (_resolved(ly.data, f"{section}.name") for ly in layers) if n is not None]
    return str(names[-1]) if names else DEFAULT_NAMES[section]


def _same_component(layer_name: Any, final: str, section: str, concrete: str) -> bool:
    if layer_name is None or layer_name == final:
        return True
    # A layer naming "auto" configures whatever auto resolved to (e.g. its `pretrained` SD source).
    return section == "guidance" and layer_name == "auto"


def _filter(layers: list[Layer], names: dict[str, str], concrete: str) -> list[Layer]:
    """Drop, per named section, the sections of layers that name another component."""
    out = []
    for ly in layers:
        data = ly.data
        for section in NAMED_SECTIONS:
            if section in data and not _same_component(_resolved(data, f"{section}.name"), names[section], section,
                                                       concrete):
                data = OmegaConf.create({k: v for k, v in data.items() if k != section})
        out.append(Layer(ly.label, data))
    return out


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for k, v in node.items():
            keys += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return keys
    return [prefix]


def _typed(section: str, cfg_cls: type, raw: Any) -> Any:
    """Validate ``raw`` (a mapping) against ``cfg_cls`` and return a dataclass instance."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{section}' must be a mapping, got {raw!r}")
    raw = dict(raw)
    # Fields typed Any (numbers or schedules) take the value as given: OmegaConf would otherwise type them by
    # their default (a schedule default would reject a plain number).
    free = {f.name for f in dataclasses.fields(cfg_cls) if f.type in (Any, "Any")}
    given = {k: raw.pop(k) for k in list(raw) if k in free}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg_cls(**given)), raw)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        msg = str(e).splitlines()[0]
        if "not in" in msg or "ConfigKeyError" in type(e).__name__:
            valid = ", ".join(f.name for f in dataclasses.fields(cfg_cls))
            raise ConfigError(f"unknown key '{section}.{key}' for {cfg_cls.__name__}; valid keys: {valid}") from None
        raise ConfigError(f"invalid value for '{section}.{key}': {msg}") from None


def _merge(layers: list[Layer]) -> dict[str, Any]:
    raw = OmegaConf.create({})
    try:
        for ly in layers:
            raw = OmegaConf.merge(raw, ly.data)
        out = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot compose the config: {str(e).splitlines()[0]}") from None
    assert isinstance(out, dict)
    return out


def compose_layers(layers: list[Layer], resolve_auto: bool = True) -> Composed:
    """Merge ``layers`` (later wins) after the named-section rule, resolve ``guidance: auto``, build and validate every
    section. The layers are used as given: :func:`load_config` prepends base, profile and recipe."""
    names = {s: _named(layers, s) for s in NAMED_SECTIONS}
    device = _resolved_top(layers, "device", "auto")
    concrete, choice = names["guidance"], ""
    if concrete == "auto" and resolve_auto:
        concrete, choice = resolve_auto_guidance(_auto_source(layers), str(device),
                                                 str(_resolved_top(layers, "prompt", "")))
    layers = _filter(layers, names, concrete)
    raw = _merge(layers)

    valid_top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - valid_top)
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}'; valid keys: {', '.join(sorted(valid_top))}")
    cfg = RunConfig()
    for key in TOP_LEVEL_SCALARS:
        if key in raw:
            setattr(cfg, key, raw[key])
    _check_top_level(cfg)

    sources: dict[str, str] = {}
    for ly in layers:
        for key in _leaves(OmegaConf.to_container(ly.data, resolve=False)):
            sources[key] = ly.label

    for section in NAMED_SECTIONS:
        sec = dict(raw.get(section) or {})
        name = concrete if section == "guidance" else names[section]
        entry = registry.lookup(section, name)
        if section == "guidance" and name != names["guidance"]:  # auto resolved: keep the keys that carry over
            valid = {f.name for f in dataclasses.fields(entry.config)}
            sec = {k: v for k, v in sec.items() if k in valid}
            sources["guidance.name"] = f"auto: {choice}"
        sec["name"] = name
        setattr(cfg, section, _typed(section, entry.config, sec))
    for section, cls in _fixed_sections().items():
        setattr(cfg, section, _typed(section, cls, raw.get(section)))
    validate(cfg)
    return Composed(cfg, sources, choice)


def _resolved_top(layers: list[Layer], key: str, default: Any) -> Any:
    values = [v for v in (_resolved(ly.data, key) for ly in layers) if v is not None]
    return values[-1] if values else default


def _auto_source(layers: list[Layer]) -> str:
    from dreamgen.guidance.auto import AutoGuidanceConfig

    return str(_resolved_top(layers, "guidance.pretrained", AutoGuidanceConfig.pretrained))


def _object_settings(prompt: str) -> tuple[str, dict[str, Any]]:
    """The object of the embedded prior's world that ``prompt`` names and its own settings
    (``dreamgen/configs/objects/<object>.yaml``; empty where it has none), or ("", {}) for no world caption."""
    from dreamgen.errors import PromptError
    from dreamgen.world.captions import parse_caption

    try:
        shape = parse_caption(prompt)[1]
    except PromptError:
        return "", {}
    data = _packaged(f"objects/{shape}.yaml")
    raw = OmegaConf.to_container(data) if data is not None else {}
    assert isinstance(raw, dict)
    return shape, raw


def embedded_prior_for(prompt: str) -> str:
    """The embedded prior's guidance for a prompt: the object's own choice where its settings name one (the
    cylinder: v2 told the camera, docs/league.md), else ``shapes`` (v1, the better text-only teacher) for the objects
    its weights know and ``shapes-cam`` (v2 told each render's camera: the tv without the Janus artefact that
    text-only v2 gives it, docs/janus.md) for the others. A prompt that is no world caption gets ``shapes``, whose
    check then names the unknown word."""
    from dreamgen.prior.io import load_spec

    shape, own = _object_settings(prompt)
    if not shape:
        return "shapes"
    name = own.get("guidance", {}).get("name")
    if name is not None:
        return str(name)
    return "shapes" if shape in load_spec("v1").shapes else "shapes-cam"


def object_layer(shape: str, own: dict[str, Any]) -> Layer:
    """The world object's own settings as a layer, without the ``guidance.name`` that :func:`embedded_prior_for`
    has read (so ``auto`` stays the name resolved)."""
    data = OmegaConf.create(own)
    if "guidance" in data:
        data.guidance.pop("name", None)
        if not data.guidance:
            del data["guidance"]
    return Layer(f"object {shape}", data)


def _object_note(composed: Composed, shape: str, own: dict[str, Any]) -> str:
    """What the world object's settings changed in ``composed`` (a later layer may have named another loss)."""
    label = f"object {shape}"
    values = {k: functools.reduce(getattr, k.split("."), composed.cfg)
              for k, src in composed.sources.items() if src == label}
    said = [f"{k}={v}" for k, v in values.items()  # a section named as by default (to scope its keys) changes nothing
            if not (k.endswith(".name") and DEFAULT_NAMES.get(k[:-5]) == v)]
    if own.get("guidance", {}).get("name") == composed.cfg.guidance.name:
        said.insert(0, f"guidance.name={composed.cfg.guidance.name}")
    return f"dreamgen/configs/objects/{shape}.yaml: {', '.join(said)}" if said else ""


def resolve_auto_guidance(source: str, device: str, prompt: str = "") -> tuple[str, str]:
    """``auto`` -> (concrete guidance name, why): Stable Diffusion when CUDA is usable and ``source``'s weights are
    on this machine (a folder, or the Hugging Face cache), else the embedded prior that knows ``prompt``."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        why = "no CUDA device"
    else:
        from dreamgen.guidance.stable_diffusion import weights_available

        if weights_available(source):
            return "stable-diffusion", f"CUDA available and {source} found on this machine"
        why = (f"CUDA available but {source} is not in the Hugging Face cache (download it with: dreamgen run "
               f"PROMPT --guidance {source})")
    name = embedded_prior_for(prompt)
    return name, f"{why}, so the embedded prior ({name})"


def family(guidance_name: str) -> str:
    """The guidance family whose profile and recipes apply (registry metadata of the guidance)."""
    return registry.lookup("guidance", guidance_name).meta["family"]


def system_layers(guidance_name: str, loss_name: str) -> list[Layer]:
    """base, the family's profile (and the guidance's overlay on it) and, if there is one, the loss's recipe in that
    family."""
    def required(rel: str) -> DictConfig:
        data = _packaged(rel)
        if data is None:
            raise ConfigError(f"the installed dreamgen lacks its config file dreamgen/configs/{rel}; reinstall it")
        return data

    fam = family(guidance_name)
    layers = [Layer("base", required("base.yaml")), Layer(f"profile {fam}", required(f"profiles/{fam}.yaml"))]
    overlay = registry.lookup("guidance", guidance_name).meta.get("overlay")
    if overlay is not None:
        layers.append(Layer(f"profile {overlay}", required(f"profiles/{overlay}.yaml")))
    recipe = _packaged(f"recipes/{fam}/{loss_name}.yaml")
    if recipe is not None:
        layers.append(Layer(f"recipe {fam}/{loss_name}", recipe))
    return layers


def user_layers(config: str | Path | None = None, overrides: list[str] | None = None,
                **flags: Any) -> list[Layer]:
    layers = []
    if config is not None:
        label = f"preset {config}" if not Path(config).exists() and not Path(config).suffix else f"config {config}"
        layers.append(Layer(label, load_yaml(config)))
    layers.append(Layer("flag", flag_layer(flags)))
    if overrides:
        layers.append(Layer("override", parse_dotlist(overrides)))
    return layers


def compose_new(config: str | Path | None = None, overrides: list[str] | None = None, **flags: Any) -> Composed:
    """A new run's config: base, profile and recipe for the guidance family and loss the user layers end up naming
    (and, where ``auto`` chose the embedded prior, the world object's own settings, which may name the loss), then
    the user layers (--config, flags, overrides)."""
    users = user_layers(config, overrides, **flags)
    concrete = _named(users, "guidance")
    objects: list[Layer] = []
    if concrete == "auto":
        prompt = str(_resolved_top(users, "prompt", ""))
        concrete, _ = resolve_auto_guidance(_auto_source(users), str(_resolved_top(users, "device", "auto")), prompt)
        shape, own = _object_settings(prompt) if family(concrete) == "prior" else ("", {})
        objects = [object_layer(shape, own)] if own else []
    registry.lookup("guidance", concrete)  # an unknown name fails here, listing the valid ones
    loss = _named(objects + users, "loss")
    registry.lookup("loss", loss)
    composed = compose_layers(system_layers(concrete, loss) + objects + users)
    if objects:
        composed.object_settings = _object_note(composed, shape, own)
    return composed


def load_config(config: str | Path | None = None, overrides: list[str] | None = None, **flags: Any) -> RunConfig:
    """Compose a new run's config (see the module docstring)."""
    return compose_new(config, overrides, **flags).cfg


def load_run_config(path: str | Path, overrides: list[str] | None = None, **flags: Any) -> RunConfig:
    """A run folder's resolved ``config.yaml`` (complete: no base/profile/recipe is added), plus overrides."""
    layers = [Layer("run config", load_yaml(path)), Layer("flag", flag_layer(flags))]
    if overrides:
        layers.append(Layer("override", parse_dotlist(overrides)))
    return compose_layers(layers).cfg


# ---- validation ----------------------------------------------------------------------------------------------------
def _check_top_level(cfg: RunConfig) -> None:
    try:
        cfg.seed = int(cfg.seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed={cfg.seed!r}: must be an integer") from None
    cfg.prompt = str(cfg.prompt)
    if isinstance(cfg.stages, str):
        cfg.stages = [cfg.stages]
    if list(cfg.stages) not in VALID_STAGES:
        raise ConfigError(f"stages={list(cfg.stages)}: valid are [nerf], [nerf, dmtet] and [nerf, dmtet, texture]")
    if not isinstance(cfg.device, str) or not DEVICE_RE.match(cfg.device):
        raise ConfigError(f"device={cfg.device!r}: must be auto, cpu, cuda or cuda:N")


def validate(cfg: RunConfig) -> None:
    """Ranges of every section (:func:`dreamgen.schema.check`) and the rules that relate sections."""
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            schema.check(value, f.name)
    geo = registry.lookup("geometry", cfg.geometry.name)
    if geo.meta.get("field") != "density":
        raise ConfigError(f"geometry.name={cfg.geometry.name}: the coarse stage renders a density field "
                          f"({', '.join(n for n, e in registry.entries('geometry').items() if e.meta.get('field') == 'density')}); "
                          "DMTet is the fine stage: stages=[nerf,dmtet] (its settings: fine.geometry.*)")
    guidance = registry.lookup("guidance", cfg.guidance.name)
    if len(cfg.prompt) > MAX_PROMPT:
        raise ConfigError(f"the prompt is {len(cfg.prompt)} characters long; at most {MAX_PROMPT}")
    if cfg.prompt.strip():
        guidance.cls.check_prompt(cfg.prompt, cfg.guidance)
    if "texture" in cfg.stages and cfg.texture.weights:
        if not hasattr(cfg.guidance, "weights"):
            raise ConfigError(f"texture.weights={cfg.texture.weights}: --guidance {cfg.guidance.name} loads no prior "
                              "weights; the embedded prior's guidances do (shapes, shapes64, shapes-cam)")
        if cfg.prompt.strip():
            guidance.cls.check_prompt(cfg.prompt, dataclasses.replace(cfg.guidance, weights=cfg.texture.weights))
    stride = guidance.meta.get("latent_stride", 1)
    sizes = [("camera.resolution", r) for r in cfg.camera.resolution]
    if "dmtet" in cfg.stages:
        sizes.append(("fine.resolution", cfg.fine.resolution))
    if "texture" in cfg.stages and cfg.texture.resolution:
        sizes.append(("texture.resolution", cfg.texture.resolution))
    for key, size in sizes:
        if size % stride:
            raise ConfigError(f"{key}={size}: {cfg.guidance.name} encodes renders to latents of stride {stride}, so "
                              f"resolutions must be multiples of {stride} (e.g. {max(stride, size // stride * stride)})")


# ---- output --------------------------------------------------------------------------------------------------------
def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _flow(value: Any) -> str:
    """One YAML flow-style line for a leaf value (lists as [a, b])."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def explain(composed: Composed) -> str:
    """The resolved config as YAML with, beside each value, the layer that set it (``default``: dataclass)."""
    data = OmegaConf.to_container(OmegaConf.structured(composed.cfg), resolve=True)
    lines: list[str] = []

    def walk(node: dict[str, Any], prefix: str, indent: int) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            pad = "  " * indent
            if isinstance(v, dict):
                lines.append(f"{pad}{k}:")
                walk(v, key, indent + 1)
            else:
                value = f"{pad}{k}: {_flow(v)}"
                lines.append(f"{value:<60} # {composed.sources.get(key, 'default')}")

    walk(data, "", 0)
    return "\n".join(lines) + "\n"
