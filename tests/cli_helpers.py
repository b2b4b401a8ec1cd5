"""Run the dreamgen CLI in-process as a user would (argv, exit code, captured output)."""

from __future__ import annotations

import sys

from dreamgen.cli import main


def run_cli(monkeypatch, capsys, *args):
    """``dreamgen ARGS...`` -> (exit code, pytest's captured stdout/stderr)."""
    monkeypatch.setattr(sys, "argv", ["dreamgen", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()
