"""Worker death: a labeler that SIGKILLs its own Ray worker on a chosen key.

Killed once → Ray restarts the actor, the unit is retried and everything commits. Killed
every time → that unit is recorded as failed (`_errors/<folder>/_failed/`), the other units
commit, and `prism4m label` exits non-zero with a summary naming the shard.

The CLI runs in a subprocess (its own Ray, its exit code), with the test labeler
registered through the `prism4m.labelers` entry-point group on PYTHONPATH so that the Ray
workers find it the way they would find a third-party labeler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism4m.labelers.testing import aligned_report, faults_claimed, write_entry_point_plugin
from prism4m.pipeline.store import DatasetStore

pytestmark = pytest.mark.timeout(300)

PRISM4M = str(Path(sys.executable).with_name("prism4m"))


def _run_cli(args: list[str], plugin_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (plugin_dir, env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    return subprocess.run([PRISM4M, *args], env=env, capture_output=True, text=True, timeout=280)


def _keys(store: DatasetStore, shard: int) -> list[str]:
    return [m.key for m in store.iter_shard("rgb", shard)]


def test_killed_once_is_retried_and_commits(fresh_photo_root, tmp_path):
    store = DatasetStore(fresh_photo_root)
    victim = _keys(store, 0)[1]
    markers = str(tmp_path / "markers")
    plugin = write_entry_point_plugin(tmp_path / "plugin")
    proc = _run_cli(["label", fresh_photo_root, "-m", "fault_injector", "-q",
                     "-c", f"fault_injector.fault_key={victim}", "-c", "fault_injector.times=1",
                     "-c", f"fault_injector.marker_dir={markers}"], plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert faults_claimed(markers, victim) == 1  # the worker really died once
    recs = store.ledger("fault_injector")
    assert sorted(recs) == sorted(store.ledger("rgb"))
    assert all(not r["invalid"] for r in recs.values())
    assert store.failed_units("fault_injector") == {}
    aligned_report(store)
    out = {m.key: json.loads(m.data) for m in store.iter_shard("fault_injector", 0)}
    assert out[victim]["h"] > 0  # the killed key has its real label, not an invalid record


def test_persistent_death_is_recorded_others_commit_and_cli_fails(fresh_photo_root, tmp_path):
    store = DatasetStore(fresh_photo_root)
    n_shards = len(store.ledger("rgb"))
    assert n_shards >= 2
    bad_shard = 0  # first in the queue: the bystanders behind it die with it
    victim = _keys(store, bad_shard)[0]
    plugin = write_entry_point_plugin(tmp_path / "plugin")
    # One worker: the other shard is queued on the same actor when it dies (a bystander that
    # must not be blamed).
    proc = _run_cli(["label", fresh_photo_root, "-m", "fault_injector,color_palette", "-q", "-w", "1",
                     "-c", f"fault_injector.fault_key={victim}"], plugin)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED label shard-{bad_shard:06d}" in proc.stderr, proc.stderr
    assert "worker_died" in proc.stderr

    # The failure is on record for every folder of the failed unit (same actor group) …
    for folder in ("fault_injector", "color_palette"):
        failed = store.failed_units(folder)
        assert set(failed) == {bad_shard}, (folder, failed)
        assert failed[bad_shard]["reason"] == "worker_died"
        # … and every other shard committed.
        assert sorted(store.ledger(folder)) == [i for i in range(n_shards) if i != bad_shard]

    # status reports it; a rerun without the fault completes the dataset (failure record cleared).
    st = subprocess.run([PRISM4M, "status", fresh_photo_root, "--json"], capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    folders = {f["folder"]: f for f in json.loads(st.stdout)["folders"]}
    assert folders["fault_injector"]["failed"] == 1 and folders["fault_injector"]["committed"] == n_shards - 1
    assert folders["color_palette"]["failed"] == 1
    proc = _run_cli(["label", fresh_photo_root, "-m", "fault_injector,color_palette", "-q"], plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert store.failed_units("fault_injector") == {}
    aligned_report(store)
