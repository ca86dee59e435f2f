"""Progress of a long command: units done/total, samples/s, ETA, failures so far.

On a terminal it redraws one line; otherwise (CI, logs) it prints a plain line at most every
`log_every` seconds and at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, desc: str, total_units: int, *, enabled: bool = True, log_every: float = 10.0,
                 stream=None):
        self.desc = desc
        self.total = total_units
        self.done = 0
        self.failed = 0
        self.samples = 0
        self.enabled = enabled and total_units > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.t0 = time.perf_counter()
        self._last_print = 0.0
        self._last_printed = -1

    def update(self, units: int = 1, samples: int = 0, failed: int = 0) -> None:
        self.done += units
        self.samples += samples
        self.failed += failed
        self._maybe_print(final=False)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.samples / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (elapsed / frac - elapsed) if frac > 0 else float("nan")
        eta_s = f"{eta:,.0f}s" if eta == eta else "?"
        return (f"{self.desc}: {self.done}/{self.total} units, {self.samples:,} samples, "
                f"{rate:,.1f} samples/s, ETA {eta_s}, failed {self.failed}")

    def _maybe_print(self, final: bool) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        elif (final and self._last_printed != self.done) or (not final and now - self._last_print >= self.log_every):
            self._last_printed = self.done
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = now

    def close(self) -> None:
        self._maybe_print(final=True)
