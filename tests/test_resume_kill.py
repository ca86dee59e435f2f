"""A label run killed with SIGKILL at a random moment resumes to the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prism4m.pipeline.ingest import ingest
from prism4m.pipeline.label import label
from prism4m.contract.store import DatasetStore
from prism4m.report.status import dataset_status

CHEAP = ["canny_edge", "color_palette", "metadata"]


def _tree_bytes(root: Path, folders: list[str]) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for f in folders for p in sorted((root / f).glob("*.tar"))}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_session) -> Path:
    src = tmp_path_factory.mktemp("kill_src")
    rng = np.random.default_rng(0)
    for i in range(36):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((160, 120), Image.BICUBIC).save(src / f"img{i:03d}.jpg")
    root = tmp_path_factory.mktemp("kill_root") / "ds"
    ingest(str(src), str(root), shard_size=2, short_side=96, n_crops=2, show_progress=False)
    return root


def test_sigkill_then_rerun_gives_identical_bytes(ingested, tmp_path, ray_session):
    import ray

    reference = tmp_path / "reference"
    victim = tmp_path / "victim"
    shutil.copytree(ingested, reference)
    shutil.copytree(ingested, victim)
    assert label(str(reference), CHEAP, workers=2, show_progress=False).ok
    n_records = len(DatasetStore(str(reference)).ledger("rgb")) * len(CHEAP)

    seed = int(os.environ.get("PRISM4M_KILL_SEED", random.randrange(1 << 30)))
    kill_after = random.Random(seed).randint(1, n_records // 2)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prism4m.cli", "label", str(victim), "-m", ",".join(CHEAP), "--workers", "2",
         "-q", "--ray-address", ray.get_runtime_context().gcs_address],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ledger_dirs = [victim / "_ledger" / f for f in CHEAP]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(len(list(d.glob("*.json"))) for d in ledger_dirs if d.exists()) >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    out = proc.stdout.read().decode()
    assert proc.returncode == -signal.SIGKILL, f"(seed {seed}) run ended before the kill: {out[-2000:]}"
    time.sleep(1.0)  # let Ray reap the dead driver's actors before we look

    # A killed run leaves unfinished files; simulate the worst (a half-written tar in place) and
    # check that nothing without a ledger record is trusted.
    store = DatasetStore(str(victim))
    for folder in CHEAP:
        committed = store.ledger(folder)
        for s in store.ledger("rgb"):
            if s not in committed:
                (victim / folder).mkdir(exist_ok=True)
                (victim / folder / f"shard-{s:06d}.tar").write_bytes(b"garbage from a killed writer")
                with pytest.raises(FileNotFoundError, match="no ledger record"):
                    list(store.iter_shard(folder, s))
    st = dataset_status(str(victim))
    assert sum(f.missing for f in st.folders if f.folder in CHEAP) > 0, f"seed {seed}"

    resumed = label(str(victim), CHEAP, workers=2, show_progress=False)
    assert resumed.ok and sum(resumed.planned.values()) < n_records  # committed work was kept
    assert _tree_bytes(victim, CHEAP) == _tree_bytes(reference, CHEAP), f"seed {seed}"
    again = label(str(victim), CHEAP, workers=2, show_progress=False)
    assert again.planned == {}
