"""Progress of long loops: a live bar (it/s, ETA) on a terminal, a plain line every N steps in a log file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("dreamgen")


class Progress:
    """``update(n, **postfix)``; ``close()``. A tqdm bar when stderr is a terminal, else one log line every
    ``log_every`` steps (and at the end) with the rate and ETA, so a redirected log has no carriage-return redraws."""

    def __init__(self, total: int, initial: int = 0, desc: str = "optimising", unit: str = "step",
                 enabled: bool = True, log_every: int = 100):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.enabled, self.log_every = enabled, max(1, log_every)
        self.t0, self.n0 = time.perf_counter(), initial
        self.postfix: dict[str, Any] = {}
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True,
                            smoothing=0.1)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled and (self.n % self.log_every == 0 or self.n == self.total):
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.n - self.n0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        # Slow loops (a batch item takes minutes) read better as seconds per item, as tqdm shows them.
        speed = f"{rate:.2f} {self.unit}/s" if rate >= 0.5 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}"
        return (f"{self.desc}: {self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
                f"{speed}, ETA {eta:.0f} s{extra}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
