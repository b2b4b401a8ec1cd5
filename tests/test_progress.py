"""The plain progress lines of a redirected log: rate (or seconds per item for slow loops) and ETA."""

from __future__ import annotations

import pytest

from dreamgen import progress as progress_module
from dreamgen.progress import Progress


@pytest.mark.parametrize("done, elapsed, speed, eta", [
    (100, 20.0, "5.00 step/s", "ETA 180 s"),   # 1000 steps at 5 steps/s
    (1, 290.0, "290.0 s/step", "ETA 2030 s"),  # a batch item every ~5 minutes: seconds per item, not 0.00 items/s
])
def test_log_line_shows_rate_and_eta(monkeypatch, done, elapsed, speed, eta):
    clock = iter([100.0, 100.0 + elapsed])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    p = Progress(total=1000 if done == 100 else 8, desc="optimising", enabled=False)
    p.n += done
    line = p.line()
    assert line.startswith(f"optimising: step {done}/") and speed in line and eta in line, line
