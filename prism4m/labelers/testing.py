"""Test-only labelers that inject faults inside Ray workers (kept in the package so that
Ray workers can import them by module path; never registered as built-ins).

- ``fault_injector`` (JSON member): on a chosen key it either kills its own process with
  SIGKILL (a worker lost mid-unit, as on a preempted node), or raises (one bad sample);
  it can also sleep per batch so that a test can act "mid-run". The number of kills is
  bounded across process restarts by marker files in ``marker_dir`` (a restarted actor
  is a new process, so in-memory counters would reset).

Register it for a test run through the entry-point group ``prism4m.labelers`` (e.g. a
temporary ``*.dist-info/entry_points.txt`` on PYTHONPATH, so Ray workers see it too).
Its output is a pure function of the pixels, so runs can be compared byte for byte.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, Resources
from prism4m.contract.members import encode_json


class InjectedFault(RuntimeError):
    """What ``fault_injector`` raises in ``mode='raise'``."""


class FaultInjectorConfig(LabelerConfig):
    fault_key: str | None = Field(None, description="the key that triggers the fault (None: never)")
    mode: str = Field("kill", pattern="^(kill|raise)$", description="kill: SIGKILL own process; raise: exception")
    times: int = Field(-1, description="how many times to fault on the key across restarts (-1: always)")
    marker_dir: str | None = Field(None, description="directory counting faults across processes")
    delay_s: float = Field(0.0, ge=0, description="sleep per batch (lets a test act mid-run)")


def _claim_fault(marker_dir: str | None, key: str, times: int) -> bool:
    """True when this attempt should fault; each fault claims one marker file (O_EXCL),
    so the count holds across killed and restarted processes."""
    if times < 0:
        return True
    if marker_dir is None:
        raise ValueError("fault_injector: times >= 0 needs marker_dir")
    Path(marker_dir).mkdir(parents=True, exist_ok=True)
    for i in range(times):
        try:
            fd = os.open(os.path.join(marker_dir, f"{key}.{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def faults_claimed(marker_dir: str, key: str) -> int:
    """How many faults were injected on ``key`` (for assertions)."""
    d = Path(marker_dir)
    return len(list(d.glob(f"{key}.*"))) if d.exists() else 0


class FaultInjectorLabeler(Labeler):
    name = "fault_injector"
    extension = "json"
    Config = FaultInjectorConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)
    uses_torch = False

    def output_config(self) -> dict:
        # The fault settings describe the environment (a crash, a transient error), not the
        # label: a rerun without the fault is the same producer, as after a real transient fault.
        return {}

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        cfg = self.config
        if cfg.delay_s:
            time.sleep(cfg.delay_s)
        out = []
        for s in batch:
            if s.key == cfg.fault_key and _claim_fault(cfg.marker_dir, s.key, cfg.times):
                if cfg.mode == "kill":
                    # SIGKILL: no cleanup, no exception; exactly what an OOM kill looks like.
                    os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(60)  # never reached; keeps the batch from finishing meanwhile
                raise InjectedFault(f"injected fault on key {s.key}")
            img = s.image
            out.append(encode_json({"h": int(img.shape[0]), "w": int(img.shape[1]),
                                    "mean": [round(float(x), 4) for x in np.asarray(img).reshape(-1, 3).mean(0)]}))
        return out


class SimulatedAcceleratorConfig(LabelerConfig):
    seconds_per_image: float = Field(0.01, ge=0, description="device time per image (a sleep: no CPU used)")


class SimulatedAcceleratorLabeler(Labeler):
    """A model that holds a device for a fixed time per image and uses no CPU meanwhile, so
    how busy a streaming worker keeps a device can be measured on a machine without one
    (benchmarks/bench_streaming.py, tests/test_streaming.py). Not a real label."""

    name = "simulated_accelerator"
    extension = "json"
    Config = SimulatedAcceleratorConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=16, pipeline_depth=3)
    uses_torch = False  # a sleep: no model to place

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        time.sleep(self.config.seconds_per_image * len(batch))  # the device is busy, the CPU is free
        return [encode_json({"h": int(s.image.shape[0]), "w": int(s.image.shape[1])}) for s in batch]


# ---------------------------------------------------------------------- test helpers
TEST_LABELERS = {"fault_injector": "prism4m.labelers.testing:FaultInjectorLabeler",
                 "simulated_accelerator": "prism4m.labelers.testing:SimulatedAcceleratorLabeler"}


def write_entry_point_plugin(directory: str | os.PathLike, labelers: dict[str, str] | None = None) -> str:
    """Register test labelers the way a third-party package would: a ``*.dist-info`` with an
    ``entry_points.txt`` in ``directory``. Put the directory on PYTHONPATH of a process
    (its Ray workers inherit it) and the registry finds them. Returns the directory."""
    labelers = labelers or TEST_LABELERS
    d = Path(directory) / "prism4m_test_labelers-0.0.0.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: prism4m-test-labelers\nVersion: 0.0.0\n")
    lines = ["[prism4m.labelers]"] + [f"{k} = {v}" for k, v in sorted(labelers.items())]
    (d / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return str(directory)


def aligned_report(store) -> dict:
    """Check Invariant 1 on a DatasetStore: every committed folder holds, shard by shard,
    exactly rgb's keys in rgb's order. Returns {folder: n_shards}; raises AssertionError."""
    rgb = store.ledger("rgb")
    assert rgb, "no committed rgb shards"
    assert sorted(rgb) == list(range(len(rgb))), f"rgb shards not contiguous: {sorted(rgb)}"
    out = {}
    for folder in store.ledger_folders():
        recs = store.ledger(folder)
        assert sorted(recs) == sorted(rgb), f"{folder}: shards {sorted(recs)} != rgb {sorted(rgb)}"
        for i in recs:
            keys = [m.key for m in store.iter_shard(folder, i)]
            rgb_keys = [m.key for m in store.iter_shard("rgb", i)]
            assert keys == rgb_keys, f"{folder}/shard-{i:06d}: keys differ from rgb"
            assert len(set(keys)) == len(keys), f"{folder}/shard-{i:06d}: duplicate keys"
        out[folder] = len(recs)
    return out


def run_driver(script: str, args: list[str], work_dir: str | os.PathLike, timeout: float = 380) -> dict:
    """Run a Ray driver script in its own process (its own Ray, not the test session's), with
    the test labelers registered as a third-party package's would be; returns the JSON the
    script printed on its last ``RESULT `` line (AssertionError with its output otherwise)."""
    import json
    import subprocess
    import sys

    work_dir = Path(work_dir)
    path = work_dir / "driver.py"
    path.write_text(script)
    plugin = write_entry_point_plugin(work_dir / "plugin")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin, env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(path), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])

