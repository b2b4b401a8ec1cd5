"""``dreamgen batch``: many prompts from one file, one run folder each, a resumable manifest, local or Ray execution.

- ``inputs``: parse ``.txt`` / ``.jsonl`` / ``.yaml`` prompt files into :class:`~dreamgen.batch.inputs.BatchItem`s.
- ``manifest``: ``manifest.json``, the batch's state, rewritten atomically after every change.
- ``runner``: one item from config to mesh (shared by every executor), the per-process guidance cache, signals.
- ``executors``: the local (sequential) and Ray executors; the driver alone writes the manifest.
- ``report``: ``summary.md`` and ``contact_sheet.png``.
- ``cli``: the ``dreamgen batch`` command.
"""
