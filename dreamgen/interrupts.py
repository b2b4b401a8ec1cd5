"""One interrupt policy for every long command (run, edit, batch, league, prior training).

The first SIGINT (Ctrl-C) or SIGTERM is remembered, not raised, while a loop has deferred it: the loop finishes its
current step, saves a checkpoint that is exactly a step boundary, and stops with :class:`~dreamgen.errors.Interrupted`
(exit 130 or 143) whose message gives the command that resumes. Outside a deferring loop (loading a model, exporting)
the first signal raises ``KeyboardInterrupt`` at once: that work is abandoned, and atomic writes leave nothing
half-written. A second signal exits immediately without writing anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class InterruptPolicy:
    """Context manager installing the policy's SIGINT/SIGTERM handlers (main thread only; elsewhere it is inert)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptPolicy:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def pending(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside: a first signal only sets :attr:`signum`; the loop checks :attr:`pending` at step boundaries."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            sys.stderr.write(f"\n{signal_name(signum)} again: stopped at once, nothing written\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        if self._deferring:
            sys.stderr.write(f"\n{signal_name(signum)}: finishing the current step and saving a checkpoint "
                             "(again to stop at once)\n")
            sys.stderr.flush()
            return
        raise KeyboardInterrupt
