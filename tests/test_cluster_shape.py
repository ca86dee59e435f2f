"""Cluster shape: a multi-node Ray (ray.cluster_utils.Cluster) on this machine.

A head with no CPUs and two 1-CPU worker nodes with custom resources, so every actor must
live on a worker node and two actors land on two nodes. The run happens in a subprocess:
it cannot share the test session's Ray. Ingest and label spread units over the nodes
(each unit result names its node); when a unit has committed, one node crashes (all its
processes are SIGKILLed, so its actor dies mid-unit) and a replacement node joins; the
dataset still ends complete and aligned, with labels equal to a direct single-process
computation.
"""

from __future__ import annotations

import textwrap

import pytest

from prism4m.labelers.testing import aligned_report, run_driver
from prism4m.contract.store import DatasetStore

pytestmark = pytest.mark.timeout(400)

DRIVER = textwrap.dedent('''
    import json, os, sys, threading, time
    from prism4m.pipeline.ray_env import set_loopback_env
    set_loopback_env()
    import ray
    from ray.cluster_utils import Cluster
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label

    corpus, root = sys.argv[1:3]
    lo = dict(node_ip_address="127.0.0.1", object_store_memory=96 * 2**20)
    # Fast health checks: a crashed node is declared dead in ~1 s instead of ~30 s.
    fast_health = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                                _system_config=fast_health, **lo))
    node_a = cluster.add_node(num_cpus=1, resources={"zone_a": 1}, **lo)
    node_b = cluster.add_node(num_cpus=1, resources={"zone_b": 1}, **lo)
    cluster.wait_for_nodes()
    names = {node_a.node_id: "a", node_b.node_id: "b"}
    out = {}
    try:
        s = ingest(corpus, root, ray_address=cluster.address, shard_size=1, short_side=64, n_crops=2,
                   show_progress=False)
        out["ingest_ok"] = s.ok
        # units that ran on Ray carry their node (a small local corpus is scanned on the driver's
        # threads instead: those results have none); the ingest units must use both nodes
        out["ingest_nodes"] = sorted({names.get(r["node_id"], "?") for rep in s.reports for r in rep.results
                                      if "node_id" in r})
        ledger = os.path.join(root, "_ledger", "fault_injector")
        n_shards = len(os.listdir(os.path.join(root, "_ledger", "rgb")))
        removal = {}
        result = {}

        def run_label():  # label in a thread: adding nodes must happen on the main thread
            try:
                result["summary"] = label(root, ["canny_edge", "fault_injector"],
                                          {"fault_injector": {"delay_s": 1.0}},
                                          ray_address=cluster.address, show_progress=False)
            except BaseException as exc:
                result["error"] = repr(exc)

        t = threading.Thread(target=run_label, daemon=True)
        t.start()
        while not (os.path.isdir(ledger) and os.listdir(ledger)) and t.is_alive():
            time.sleep(0.05)
        removal["committed_before"] = len(os.listdir(ledger)) if os.path.isdir(ledger) else 0
        cluster.remove_node(node_b, allow_graceful=False)  # SIGKILL: a crash, not a drain
        node_c = cluster.add_node(num_cpus=1, resources={"zone_c": 1}, **lo)
        names[node_c.node_id] = "c"
        t.join(timeout=240)
        assert "summary" in result, result.get("error", "label did not finish")
        lab = result["summary"]
        out.update(n_shards=n_shards, removal=removal, label_ok=lab.ok,
                   label_failures=[str(f["unit"]) + f["reason"] for f in lab.failures],
                   label_units=[(r["shard"], names.get(r["node_id"], "?")) for rep in lab.reports
                                for r in rep.results])
    finally:
        print("RESULT " + json.dumps(out), flush=True)
        ray.shutdown()
        cluster.shutdown()
''')


def test_units_spread_over_nodes_and_survive_a_node_crash(photo_corpus, tmp_path):
    root = str(tmp_path / "ds")
    res = run_driver(DRIVER, [str(photo_corpus), root], tmp_path)

    # Ingest units run on the worker nodes (the head has no CPU). Whether both nodes get some
    # depends on which actor starts first: a ready actor never waits for a slow starter, and
    # 8 tiny units can all be done before the other one is up (seen once on a loaded box).
    # The label run below, at 1 s a unit, checks that units spread over the nodes.
    assert res["ingest_ok"] and res["ingest_nodes"] and set(res["ingest_nodes"]) <= {"a", "b"}, res
    # The node went away mid-run: after the first commit, before the last.
    n = res["n_shards"]
    assert 1 <= res["removal"]["committed_before"] < n, res["removal"]
    assert res["label_ok"], res["label_failures"]
    nodes = [node for _, node in res["label_units"]]
    assert "a" in nodes and "c" in nodes, nodes  # the replacement node took over work
    assert sorted(s for s, _ in res["label_units"]) == list(range(n))  # each unit done once

    # Complete and aligned, and the labels are what one process computes from the pixels.
    store = DatasetStore(root)
    folders = aligned_report(store)
    assert folders == {f: n for f in ("rgb", "source", "crop_settings", "canny_edge", "fault_injector")}
    assert all(not st for st in (store.failed_units("canny_edge"), store.failed_units("fault_injector")))
    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler
    from prism4m.pipeline.label import decode_rgb

    canny = make_labeler("canny_edge")
    for i in range(n):
        rgb = store.read_shard("rgb", i)
        expect = canny.label_batch([LabelInput(m.key, decode_rgb(m)) for m in rgb])
        assert [m.data for m in store.read_shard("canny_edge", i)] == expect
