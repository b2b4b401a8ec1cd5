"""Prompt files: ``.txt`` (one prompt per line), ``.jsonl`` (one item per line) or ``.yaml`` (a list of items).

Blank lines and lines starting with ``#`` are ignored in ``.txt`` and ``.jsonl``. An item of a ``.jsonl`` / ``.yaml``
file is a prompt string or a mapping with these fields (any other field is an error, so a typo is not ignored)::

    prompt: "a red cube"          # required
    name: red-cube                # optional: the run folder's name (letters, digits, - and _)
    loss: vsd                     # optional: loss.name (the loss starts from its own defaults, as with --loss)
    seed: 3                       # optional
    steps: 500                    # optional: trainer.steps
    config: dreamfusion-sd        # optional: a YAML file or preset, instead of `batch --config`
    overrides: {camera.resolution: [64], loss.guidance_scale: 50}   # or a list: ["camera.resolution=[64]"]

An item without a ``name`` is named by the slug of its prompt; a prompt repeated without names gets ``-2``, ``-3``
suffixes, so the names (and therefore the run folders a re-run finds) depend only on the file. Two items with the
same explicit name are an error. Every problem of the file is collected with its line number before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamgen.errors import DreamgenError
from dreamgen.runs import slugify

ITEM_FIELDS = ("prompt", "name", "loss", "seed", "steps", "config", "overrides")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")  # no dots: names never clash with manifest.json etc.


class BatchInputError(DreamgenError):
    """A prompt file with problems; ``problems`` holds one ``file:line: message`` string per problem."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        n = len(problems)
        super().__init__(f"{path}: {n} problem{'s' if n > 1 else ''} (listed above); nothing was run")


@dataclass(frozen=True)
class BatchItem:
    name: str
    prompt: str
    line: int  # 1-based line of the item in its file
    loss: str | None = None
    seed: int | None = None
    steps: int | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()  # dotlist, applied after the batch's trailing overrides
    explicit_name: bool = field(default=False, compare=False)

    def spec(self) -> dict[str, Any]:
        """What the item asks for, as recorded in the manifest."""
        return {"loss": self.loss, "seed": self.seed, "steps": self.steps, "config": self.config,
                "overrides": list(self.overrides)}


def read_batch_file(path: Path) -> list[BatchItem]:
    """Parse a prompt file; raises :class:`BatchInputError` listing every problem (with line numbers)."""
    path = Path(path)
    if not path.is_file():
        raise DreamgenError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    parsers = {".txt": _parse_txt, ".jsonl": _parse_jsonl, ".yaml": _parse_yaml, ".yml": _parse_yaml}
    if suffix not in parsers:
        raise DreamgenError(f"unsupported prompt file {path.name!r}: use .txt, .jsonl or .yaml")
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DreamgenError(f"{path}:{line}: not UTF-8 text (byte {e.start}); a prompt file is text: .txt, .jsonl or "
                            ".yaml") from None
    except OSError as e:
        raise DreamgenError(f"cannot read prompt file {path}: {e.strerror or type(e).__name__}") from None
    raw = parsers[suffix](text, problems)
    items = []
    for line, value in raw:
        item = _item(value, line, problems)
        if item is not None:
            items.append(item)
    items = _assign_names(items, problems)
    if problems:
        problems.sort(key=lambda p: int(p.split(":", 1)[0]))  # stable: a line's problems keep their order
        raise BatchInputError(path, [f"{path.name}:{p}" for p in problems])
    if not items:
        raise DreamgenError(f"{path}: the file holds no prompts")
    return items


def _parse_txt(text: str, problems: list[str]) -> list[tuple[int, Any]]:
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1)
            if ln.strip() and not ln.lstrip().startswith("#")]


def _parse_jsonl(text: str, problems: list[str]) -> list[tuple[int, Any]]:
    out = []
    for i, ln in enumerate(text.splitlines(), 1):
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        try:
            out.append((i, json.loads(ln)))
        except json.JSONDecodeError as e:
            problems.append(f"{i}: invalid JSON ({e.msg} at column {e.colno})")
    return out


def _parse_yaml(text: str, problems: list[str]) -> list[tuple[int, Any]]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes carry the line numbers
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problems.append(f"{line}: invalid YAML ({getattr(e, 'problem', None) or str(e).splitlines()[0]})")
        return []
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode) or not isinstance(data, list):
        problems.append(f"{root.start_mark.line + 1}: the file must be a YAML list of items (- prompt: ...)")
        return []
    return [(node.start_mark.line + 1, value) for node, value in zip(root.value, data)]


def _item(value: Any, line: int, problems: list[str]) -> BatchItem | None:
    def bad(msg: str) -> None:
        problems.append(f"{line}: {msg}")

    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        bad(f"an item must be a prompt string or a mapping with a 'prompt', got {type(value).__name__}")
        return None
    n_before = len(problems)
    unknown = [k for k in value if k not in ITEM_FIELDS]
    if unknown:
        bad(f"unknown field '{unknown[0]}'; valid fields: {', '.join(ITEM_FIELDS)}")
    prompt = value.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        bad("empty prompt" if prompt is None or isinstance(prompt, str) else "'prompt' must be a string")
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
        bad(f"invalid name {name!r}: use up to 80 letters, digits, '-' and '_'")
    for key in ("loss", "config"):
        if value.get(key) is not None and not isinstance(value[key], str):
            bad(f"'{key}' must be a string")
    for key in ("seed", "steps"):
        v = value.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or (key == "steps" and v < 1)):
            bad(f"'{key}' must be {'a positive' if key == 'steps' else 'an'} integer, got {v!r}")
    overrides = _overrides(value.get("overrides"), bad)
    if len(problems) > n_before:
        return None
    return BatchItem(name=name or "", prompt=prompt.strip(), line=line, loss=value.get("loss"), seed=value.get("seed"),
                     steps=value.get("steps"), config=value.get("config"), overrides=overrides,
                     explicit_name=name is not None)


def _overrides(raw: Any, bad) -> tuple[str, ...]:
    """A mapping {dotted.key: value} or a list of "key=value" strings -> dotlist strings."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        # JSON is valid YAML flow syntax, which is how OmegaConf parses a dotlist value.
        return tuple(f"{k}={json.dumps(v)}" for k, v in raw.items())
    if isinstance(raw, list) and all(isinstance(o, str) for o in raw):
        malformed = [o for o in raw if "=" not in o or o.startswith("=")]
        if malformed:
            bad(f"override {malformed[0]!r} is not of the form key=value")
        return tuple(raw)
    bad("'overrides' must be a mapping {key: value} or a list of \"key=value\" strings")
    return ()


def _assign_names(items: list[BatchItem], problems: list[str]) -> list[BatchItem]:
    """Explicit names must be unique; the others are prompt slugs made unique with -2, -3, ... in file order."""
    taken: dict[str, int] = {}
    for it in items:
        if it.explicit_name:
            if it.name in taken:
                problems.append(f"{it.line}: duplicate name '{it.name}' (first used on line {taken[it.name]})")
            else:
                taken[it.name] = it.line
    out = []
    for it in items:
        if not it.explicit_name:
            base = slugify(it.prompt)
            name, k = base, 2
            while name in taken:
                name, k = f"{base}-{k}", k + 1
            taken[name] = it.line
            it = dataclasses.replace(it, name=name)
        out.append(it)
    return out
