"""The streaming label worker (pipeline_depth > 1): same bytes as the serial worker, bounded.

Two copies of one root are labelled by one actor, once in series (pipeline_depth 1) and
once streamed (pipeline_depth 3: the next shard read and decoded, the previous one encoded
and written, while the model runs), with a simulated accelerator, Canny edges and a
labeler that raises on one key (an invalid record and an error line). Every committed file
must be byte-identical, the ledger records equal but for timings, and no actor may hold
more shards in flight than its depth. The run happens in a subprocess whose Ray workers
find the test labelers through an entry point, as a third-party package's would.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from prism4m.contract.store import DatasetStore
from prism4m.labelers.testing import aligned_report, run_driver

pytestmark = pytest.mark.timeout(300)

DRIVER = textwrap.dedent('''
    import json, sys
    from prism4m.pipeline.ray_env import ensure_ray, set_loopback_env
    set_loopback_env()
    from prism4m.pipeline.label import label

    ensure_ray(num_cpus=2)
    out = {}
    for root, depth in ((sys.argv[1], 1), (sys.argv[2], 3)):
        configs = {"simulated_accelerator": {"seconds_per_image": 0.02, "pipeline_depth": depth},
                   "fault_injector": {"mode": "raise", "fault_key": sys.argv[3]}}
        s = label(root, ["canny_edge", "fault_injector", "simulated_accelerator"], configs, workers=1,
                  show_progress=False)
        out[str(depth)] = {"ok": s.ok, "max_in_flight": max(r["max_in_flight"] for r in s.results),
                           "spans": [r["compute_span"] for r in s.results]}
    print("RESULT " + json.dumps(out), flush=True)
''')


def _committed_files(root: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(("_tmp", "_ledger", "prism4m.json")):
            out[rel] = path.read_bytes()
    return out


def _records(root: str, folder: str) -> dict[int, dict]:
    timing = {"committed_at", "wall_s"}
    return {s: {k: v for k, v in rec.items() if k not in timing} for s, rec in DatasetStore(root).ledger(folder).items()}


def test_streamed_labels_are_byte_identical_to_serial_and_in_flight_is_bounded(photo_root, tmp_path):
    serial, streamed = str(tmp_path / "serial"), str(tmp_path / "streamed")
    shutil.copytree(photo_root, serial)
    shutil.copytree(photo_root, streamed)
    victim = next(DatasetStore(serial).iter_shard("rgb", 1)).key
    res = run_driver(DRIVER, [serial, streamed, victim], tmp_path, timeout=280)
    assert res["1"]["ok"] and res["3"]["ok"]

    # Byte-identical committed output, invalid record and error lines included.
    a, b = _committed_files(serial), _committed_files(streamed)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    for folder in ("canny_edge", "fault_injector", "simulated_accelerator"):
        assert _records(serial, folder) == _records(streamed, folder), folder
    assert _records(streamed, "fault_injector")[1]["invalid"] == [victim]
    aligned_report(DatasetStore(streamed))

    # Bounded: the serial actor never held two shards, the streamed one at most its depth,
    # and the model never ran two shards at once (compute spans do not overlap).
    assert res["1"]["max_in_flight"] == 1
    assert 2 <= res["3"]["max_in_flight"] <= 3  # both shards were in the actor at once: it streamed
    spans = sorted(res["3"]["spans"])
    assert all(end <= nxt_start + 1e-3 for (_, end), (nxt_start, _) in zip(spans, spans[1:]))
