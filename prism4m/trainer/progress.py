"""What rank 0 reports while a run steps: progress lines on stdout and records in log.jsonl.

A progress line every ``log_every`` steps, at the last step and at least every ~10 s (a slow
run still shows it is alive): ``step 120/500  loss 4.213  12.3 steps/s  eta 33s``.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import fsspec


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class JsonlLog:
    """Appends records to ``path`` (None: writes nothing, as on ranks other than 0)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        if path:
            fs, p = fsspec.core.url_to_fs(path)
            fs.makedirs(os.path.dirname(p), exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path:
            with fsspec.open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Progress:
    """Per step: a progress line (when due, on rank 0) and, every ``every`` steps and at the
    last, the step's record with the samples per second since the last one to ``log``."""

    def __init__(self, total: int, start: int, every: int, log: JsonlLog, enabled: bool,
                 interval_s: float = 10.0) -> None:
        self.total, self.every, self.log, self.enabled, self.interval_s = total, every, log, enabled, interval_s
        self.last_step, self.last_t = start, time.perf_counter()
        self.tick, self.samples = self.last_t, 0

    def step(self, record: Mapping[str, Any], samples: int) -> None:
        step = record["step"]
        self._print(step, record["loss"])
        self.samples += samples
        if self.every and (step % self.every == 0 or step == self.total):
            elapsed = time.perf_counter() - self.tick
            self.log.write({**record, "samples_per_s": self.samples / max(elapsed, 1e-9)})
            self.tick, self.samples = time.perf_counter(), 0

    def _print(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        due = step == self.total or (self.every and step % self.every == 0) or now - self.last_t >= self.interval_s
        if not (self.enabled and due):
            return
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(f"step {step}/{self.total}  loss {loss:.3f}  {rate:.1f} steps/s  eta "
              f"{_duration(eta) if math.isfinite(eta) else '?'}", flush=True)
        self.last_step, self.last_t = step, now
