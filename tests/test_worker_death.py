"""Worker death: a labeler that SIGKILLs its own Ray worker on a chosen key.

Killed once → Ray restarts the actor, the unit is retried and everything commits. Killed
every time → the shard is narrowed down to the key that kills it (pipeline/narrow.py): that
sample becomes an invalid record with reason worker_died, named on stderr, and the rest of
the shard and the other shards commit; `--retry-invalid` later reruns just that sample.

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
from prism4m.contract.store import DatasetStore, iter_tar_bytes as iter_tar

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


def test_persistent_death_is_narrowed_to_its_key_and_the_rest_commits(fresh_photo_root, tmp_path):
    store = DatasetStore(fresh_photo_root)
    n_shards = len(store.ledger("rgb"))
    assert n_shards >= 2
    bad_shard = 0  # first in the queue: the bystanders behind it die with it
    keys = _keys(store, bad_shard)
    victim = keys[2]
    plugin = write_entry_point_plugin(tmp_path / "plugin")
    # One worker: the other shard is queued on the same actor when it dies (a bystander that
    # must not be blamed).
    proc = _run_cli(["label", fresh_photo_root, "-m", "fault_injector,color_palette", "-q", "-w", "1",
                     "-c", f"fault_injector.fault_key={victim}"], plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert victim in proc.stderr and "worker_died" in proc.stderr, proc.stderr  # the culprit is named

    # Every shard of both folders of the unit's actor group committed; only the culprit is invalid.
    for folder in ("fault_injector", "color_palette"):
        assert store.failed_units(folder) == {}, folder
        recs = store.ledger(folder)
        assert sorted(recs) == list(range(n_shards)), (folder, recs)
        assert recs[bad_shard]["invalid"] == [victim], folder
        assert recs[bad_shard]["errors_by_reason"] == {"worker_died": 1}
        assert all(not recs[i]["invalid"] for i in range(n_shards) if i != bad_shard)
        members = store.read_shard(folder, bad_shard)
        assert [m.key for m in members] == keys  # aligned with rgb
        assert all(bool(m.data) == (m.key != victim) for m in members)
    errors = store.read_errors("fault_injector")
    assert [(e["key"], e["reason"]) for e in errors] == [(victim, "worker_died")]
    aligned_report(store)

    # status reports the invalid sample by reason; --retry-invalid reruns just it once the
    # fault is gone, and the shard is whole.
    st = subprocess.run([PRISM4M, "status", fresh_photo_root, "--json"], capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    folders = {f["folder"]: f for f in json.loads(st.stdout)["folders"]}
    assert folders["fault_injector"]["invalid"] == 1 and folders["fault_injector"]["committed"] == n_shards
    assert folders["fault_injector"]["errors"] == {"worker_died": 1}
    before = {i: store.read_bytes(store.shard_path("color_palette", i)) for i in range(n_shards)}
    proc = _run_cli(["label", fresh_photo_root, "-m", "fault_injector,color_palette", "-q", "--retry-invalid"],
                    plugin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for folder in ("fault_injector", "color_palette"):
        assert all(not r["invalid"] for r in store.ledger(folder).values()), folder
    assert store.read_errors("fault_injector") == []
    # The valid samples kept their committed bytes; the recovered one got its real label.
    after = {m.key: m.data for m in store.read_shard("color_palette", bad_shard)}
    kept = {m.key: m.data for m in iter_tar(before[bad_shard])}
    assert all(after[k] == v for k, v in kept.items() if v)
    assert after[victim]
    assert all(store.read_bytes(store.shard_path("color_palette", i)) == before[i] for i in range(1, n_shards))
    aligned_report(store)
