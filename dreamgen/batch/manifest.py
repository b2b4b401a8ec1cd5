"""``manifest.json``: the state of a batch, one record per item, rewritten atomically after every change.

Because every write replaces the whole file by rename, a kill at any moment leaves the previous or the next complete
manifest, never a torn one. Paths in it are relative to the batch folder, so the folder can be moved.

Item statuses: ``queued`` (not started), ``running`` (started; a record left ``running`` means the process died),
``interrupted`` (stopped by SIGINT/SIGTERM after writing a checkpoint), ``done``, ``failed`` (``error`` says why).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamgen.batch.inputs import BatchItem
from dreamgen.errors import DreamgenError
from dreamgen.runs import atomic_write_text

MANIFEST = "manifest.json"
VERSION = 1
STATUSES = ("queued", "running", "interrupted", "done", "failed")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class ItemRecord:
    name: str
    prompt: str
    run_dir: str  # relative to the batch folder
    spec: dict[str, Any] = field(default_factory=dict)  # the item's own settings (BatchItem.spec)
    status: str = "queued"
    error: str | None = None
    device: str | None = None
    attempts: int = 0
    started: str | None = None  # when the current attempt started from step 0 (a resume keeps it)
    finished: str | None = None
    seconds: float = 0.0  # wall time of the attempts since that start, summed over resumes
    step: int = 0
    steps: int | None = None
    final_loss: float | None = None
    resumed_from: int | None = None  # the checkpoint step the last attempt continued from
    mesh: str | None = None


class Manifest:
    """The batch folder's ``manifest.json``. Only the driver process writes it."""

    def __init__(self, out_dir: Path, source: str, overrides: list[str], records: dict[str, ItemRecord]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST
        self.source = source
        self.overrides = overrides
        self.records = records

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        path = Path(out_dir) / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(ItemRecord)}
            records = {r["name"]: ItemRecord(**{k: v for k, v in r.items() if k in known}) for r in data["items"]}
        except (ValueError, KeyError, TypeError) as e:
            raise DreamgenError(f"{path} is not a dreamgen batch manifest ({e}); use another --out") from None
        return cls(out_dir, data.get("source", ""), data.get("overrides", []), records)

    @classmethod
    def open(cls, out_dir: Path, items: list[BatchItem], source: str, overrides: list[str],
             write: bool = True) -> Manifest:
        """The existing manifest reconciled with ``items`` (new items queued), or a new one; saved if it changed
        and ``write``.

        An item is identified by its name. A name the manifest holds for another prompt is an error: its run folder
        belongs to that prompt. Items of the manifest that the file no longer lists are kept, and left alone.
        """
        old = cls.load(out_dir)
        m = old or cls(out_dir, source, overrides, {})
        before = m.to_json() if old else None
        clashes = [it for it in items if it.name in m.records and m.records[it.name].prompt != it.prompt]
        if clashes:
            it = clashes[0]
            raise DreamgenError(
                f"{m.path} already has item '{it.name}' for prompt {m.records[it.name].prompt!r}, not {it.prompt!r} "
                f"({len(clashes)} such item{'s' if len(clashes) > 1 else ''}); name the item(s) or use another --out")
        m.source, m.overrides = source, overrides
        for it in items:
            rec = m.records.get(it.name)
            if rec is None:
                m.records[it.name] = ItemRecord(name=it.name, prompt=it.prompt, run_dir=it.name, spec=it.spec())
            elif rec.status != "done":
                rec.spec = it.spec()  # settings edited in the file apply when the item next runs
        if write and m.to_json() != before:
            m.save()
        return m

    def to_json(self) -> str:
        data = {"version": VERSION, "source": self.source, "overrides": self.overrides,
                "items": [dataclasses.asdict(r) for r in self.records.values()]}
        return json.dumps(data, indent=2) + "\n"

    def save(self) -> None:
        atomic_write_text(self.path, self.to_json())

    def update(self, name: str, **fields: Any) -> None:
        rec = self.records[name]
        for k, v in fields.items():
            if not hasattr(rec, k):
                raise AttributeError(f"ItemRecord has no field {k!r}")
            setattr(rec, k, v)
        self.save()

    def counts(self, names: list[str]) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for n in names:
            out[self.records[n].status] += 1
        return out
