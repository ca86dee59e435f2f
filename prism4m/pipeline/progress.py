"""Progress of a long command: units done/total, samples/s, ETA, failures so far.

On a terminal it redraws one line; otherwise (CI, logs) it prints a plain line at most every
`log_every` seconds and at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, desc: str, total_units: int, *, enabled: bool = True, log_every: float = 10.0,
                 stream=None, unit_name: str = "samples"):
        self.desc = desc
        self.total = total_units
        self.done = 0
        self.failed = 0
        self.samples = 0
        self.invalid = 0
        self.unit_name = unit_name
        self.t_first: float | None = None  # rates count from the first finished unit (after start-up)
        self.enabled = enabled and total_units > 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.t0 = time.perf_counter()
        self._last_print = 0.0
        self._last_printed = -1

    def update(self, units: int = 1, samples: int = 0, failed: int = 0, invalid: int = 0) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
            self._first_samples = samples
            self._first_units = units
        self.done += units
        self.samples += samples
        self.failed += failed
        self.invalid += invalid
        self._maybe_print(final=False)

    def line(self) -> str:
        now = time.perf_counter()
        elapsed = now - self.t0
        # Rate and ETA from the first finished unit on: start-up (Ray, model loading) is not work.
        steady = now - self.t_first if self.t_first is not None else 0.0
        steady_units = self.done - getattr(self, "_first_units", 0)
        steady_samples = self.samples - getattr(self, "_first_samples", 0)
        rate = steady_samples / steady if steady > 0 and steady_samples > 0 else self.samples / max(elapsed, 1e-9)
        if self.done >= self.total:
            eta_s = "done"
        elif steady > 0 and steady_units > 0:
            eta_s = f"ETA {(self.total - self.done) * steady / steady_units:,.0f}s"
        else:
            eta_s = "ETA ?"
        return (f"{self.desc}: {self.done}/{self.total} units, {self.samples:,} {self.unit_name}, "
                f"{rate:,.1f} {self.unit_name}/s, {eta_s}, elapsed {elapsed:,.0f}s, "
                f"failed units {self.failed}, invalid samples {self.invalid}")

    def _maybe_print(self, final: bool) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        elif (final and self._last_printed != self.done) or (not final and now - self._last_print >= self.log_every):
            self._last_printed = self.done
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = now

    def close(self) -> None:
        self._maybe_print(final=True)
