"""Run configuration: typed dataclasses per component, composed from YAML files and ``key=value`` overrides.

Layers, later wins: dataclass defaults < ``configs/default.yaml`` < ``--config FILE`` < CLI flags < dotlist overrides.
Sections whose class depends on a name (``guidance``, ``loss``, ``geometry``) are validated against the config
dataclass that the registry holds for that name; the others against their fixed dataclass. Either way a misspelt key
is a :class:`ConfigError` naming the key and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dreamgen import registry
from dreamgen.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
NAMED_SECTIONS = {"guidance": "guidance", "loss": "loss", "geometry": "geometry"}


def _fixed_sections() -> dict[str, type]:
    # Imported here: each component module owns its config dataclass.
    from dreamgen.cameras import CameraConfig
    from dreamgen.export.mesh import ExportConfig
    from dreamgen.prompts import PromptConfig
    from dreamgen.render.background import BackgroundConfig
    from dreamgen.render.volume import RendererConfig
    from dreamgen.train import FineStageConfig, TrainerConfig

    return {
        "camera": CameraConfig,
        "renderer": RendererConfig,
        "background": BackgroundConfig,
        "prompts": PromptConfig,
        "trainer": TrainerConfig,
        "fine": FineStageConfig,
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
    export: Any = None


TOP_LEVEL_SCALARS = ("prompt", "seed", "device", "out_dir", "stages", "source_run")
DEFAULT_NAMES = {"guidance": "auto", "loss": "sds", "geometry": "hashgrid-nerf"}


def _valid_keys(cfg_cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cfg_cls))


def _typed(section: str, cfg_cls: type, raw: Any) -> Any:
    """Validate ``raw`` (a mapping) against ``cfg_cls`` and return a dataclass instance."""
    raw = {} if raw is None else raw
    if not isinstance(raw, (dict, DictConfig)):
        raise ConfigError(f"config section '{section}' must be a mapping, got {raw!r}")
    raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=True) if isinstance(raw, DictConfig) else dict(raw)
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
            raise ConfigError(
                f"unknown key '{section}.{key}' for {cfg_cls.__name__}; valid keys: {_valid_keys(cfg_cls)}"
            ) from None
        raise ConfigError(f"invalid value for '{section}.{key}': {msg}") from None


def load_yaml(path: str | Path) -> DictConfig:
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = CONFIG_DIR / f"{path}.yaml"
    if not p.exists():
        raise ConfigError(f"config file not found: {path} (presets live in {CONFIG_DIR})")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml errors carry multi-line messages
        raise ConfigError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return cfg


def parse_dotlist(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. trainer.steps=2000)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {str(e).splitlines()[0]}") from None


def compose(*layers: DictConfig | dict | None) -> RunConfig:
    """Merge raw layers (later wins) and validate every section into its dataclass."""
    raw = OmegaConf.create({})
    for layer in layers:
        if layer is not None:
            raw = OmegaConf.merge(raw, layer)
    raw_dict = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(raw_dict, dict)

    valid_top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw_dict) - valid_top)
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}'; valid keys: {', '.join(sorted(valid_top))}")

    cfg = RunConfig()
    for key in TOP_LEVEL_SCALARS:
        if key in raw_dict:
            setattr(cfg, key, raw_dict[key])
    cfg.seed = int(cfg.seed)
    cfg.prompt = str(cfg.prompt)
    if isinstance(cfg.stages, str):
        cfg.stages = [cfg.stages]
    if list(cfg.stages) not in (["nerf"], ["nerf", "dmtet"]):
        raise ConfigError(f"stages={list(cfg.stages)}: valid are [nerf] and [nerf, dmtet]")

    for section, kind in NAMED_SECTIONS.items():
        sec = dict(raw_dict.get(section) or {})
        name = sec.get("name", DEFAULT_NAMES[section])
        sec["name"] = name
        entry = registry.lookup(kind, name)
        setattr(cfg, section, _typed(section, entry.config, sec))

    for section, cls in _fixed_sections().items():
        setattr(cfg, section, _typed(section, cls, raw_dict.get(section)))
    return cfg


def load_config(config: str | Path | None = None, overrides: list[str] | None = None, **flags: Any) -> RunConfig:
    """Compose the run config: defaults, ``configs/default.yaml``, ``config``, CLI flags, then dotlist overrides."""
    layers: list[Any] = []
    default = CONFIG_DIR / "default.yaml"
    if default.exists():
        layers.append(load_yaml(default))
    if config is not None:
        layers.append(load_yaml(config))
    flag_layer: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is None:
            continue
        node = flag_layer
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    layers.append(flag_layer)
    if overrides:
        layers.append(parse_dotlist(overrides))
    return compose(*_restart_renamed_sections(layers))


def _restart_renamed_sections(layers: list[Any]) -> list[Any]:
    """A layer that names a component (``loss.name: vsd``) starts that section from the component's own defaults:
    earlier layers' settings for the section were meant for another component (default.yaml tunes SDS, not VSD)."""
    out: list[Any] = []
    for layer in layers:
        for section in NAMED_SECTIONS:
            named = isinstance(layer, (dict, DictConfig)) and isinstance(layer.get(section), (dict, DictConfig)) \
                and layer[section].get("name") is not None
            if named:
                out = [_drop_section(prev, section) for prev in out]
        out.append(layer)
    return out


def _drop_section(layer: Any, section: str) -> Any:
    if not isinstance(layer, (dict, DictConfig)) or section not in layer:
        return layer
    data = OmegaConf.to_container(OmegaConf.create(layer), resolve=True)
    assert isinstance(data, dict)
    del data[section]
    return data


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml_file(path: str | Path) -> RunConfig:
    """Reload a resolved ``config.yaml`` written into a run folder."""
    return compose(load_yaml(path))
