"""User journeys on a cluster with GPUs: GPU actors run or fail fast, never wait for ever.

Ray accepts GPU resources on a CPU machine (ENVIRONMENT.md), so a `ray.cluster_utils.Cluster`
node declaring `num_gpus=1` schedules 0.5-GPU actors exactly as a GPU node would; the labeler
runs with `device: cpu`. Each journey runs in a subprocess (a multi-node Ray cannot share the
test session's Ray) and is bounded by a pytest-timeout: a hang fails instead of blocking CI.

- Sizing: depth at 0.5 GPU on a 4-CPU/1-GPU node gets 2 actors (not 4, which left two pending
  for ever and the run at `0/4 units`), and finishes.
- A request no node can hold (1.5 GPUs, 8 CPUs) is refused at once, naming it.
- An actor that cannot be placed is dropped with a warning after the bound; if none can, the
  run fails fast naming the request and the cluster.
- The CLI joins an external head (`ray start --head`) with `--ray-address`, says which cluster
  it joined, and completes; `--ray-address auto` with no cluster is one line, not a traceback.
- The job spec's real groups (jobs/4m21-labels.yaml) each fit on one GPU node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

from prism4m.labelers.testing import aligned_report
from prism4m.contract.store import DatasetStore

REPO = Path(__file__).resolve().parents[1]
PRISM4M = str(Path(sys.executable).with_name("prism4m"))


def test_job_spec_groups_fit_a_gpu_node_by_their_gpu_fraction():
    """jobs/4m21-labels.yaml sets no worker count: each of its actor groups must fit a GPU node
    and get as many actors as its GPU fraction allows (not one per CPU, most of which would
    never be placed). Grouped as label.py groups them; GPU fractions summed without a cap."""
    from prism4m.jobs import load_job
    from prism4m.labelers.registry import make_labeler
    from prism4m.pipeline.ray_env import actors_that_fit, resource_request, unfit_request

    spec = load_job(REPO / "jobs" / "4m21-labels.yaml")
    assert spec.label is not None and spec.label.workers is None
    groups: dict[str, list] = defaultdict(list)
    for name in spec.label.modalities:
        lab = make_labeler(name, spec.label.labelers.get(name))
        groups[lab.config.group].append(lab.resources)
    node = {"CPU": 16.0, "GPU": 1.0, "memory": 200 * 2.0**30}  # a single-GPU cloud node
    fits = {}
    for group, res in groups.items():
        cpus, gpus = max(r.num_cpus for r in res), sum(r.num_gpus for r in res)
        assert unfit_request(group, resource_request(cpus, gpus), [node]) is None, (group, cpus, gpus)
        fits[group] = actors_that_fit(cpus, gpus, nodes=[node])
        assert fits[group] == (int(round(1 / gpus * 1e4)) // 10_000 if gpus else int(16 // cpus)), (group, gpus)
    assert fits == {"default": 16, "dense": 1, "imagebind": 2, "sam": 2, "objects": 1, "text": 2}, fits
    # Two such nodes hold twice as many; an 8-GPU node holds 8 dense actors if it has the CPUs.
    assert actors_that_fit(1, 0.5, nodes=[node, node]) == 4
    assert actors_that_fit(1, 0.2 + 0.2 + 0.1 + 0.25 + 0.25, nodes=[{"CPU": 64.0, "GPU": 8.0}]) == 8
    assert actors_that_fit(1, 0.3 + 0.3 + 0.3, nodes=[{"CPU": 4.0, "GPU": 8.0}]) == 4  # CPU-bound there


@pytest.fixture(scope="module")
def depth_ckpt(tmp_path_factory) -> str:
    from model_fixtures_hf import build_depth_anything

    return build_depth_anything(tmp_path_factory.mktemp("ckpt") / "depth")


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # never the test session's (or anybody's) Ray
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


DRIVER = textwrap.dedent('''
    import json, os, sys, time
    from prism4m.pipeline.ray_env import set_loopback_env
    set_loopback_env()
    import ray
    from ray.cluster_utils import Cluster
    from prism4m.errors import UserError
    from prism4m.pipeline.execute import ActorPlacementError, run_units
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import LabelWorker, label

    corpus, root, depth_ckpt = sys.argv[1:4]
    lo = dict(node_ip_address="127.0.0.1", object_store_memory=96 * 2**20)
    # A head without CPUs and one GPU node: 4 CPUs, 1 GPU (declared; the labeler runs on CPU).
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False, **lo))
    cluster.add_node(num_cpus=4, num_gpus=1, **lo)
    cluster.wait_for_nodes()
    depth = {"checkpoint": depth_ckpt, "device": "cpu", "num_gpus": 0.5, "batch_size": 2}
    out = {}

    def timed(key, fn):
        t = time.monotonic()
        try:
            value = fn()
            out[key] = {"s": time.monotonic() - t}
            return value
        except Exception as exc:
            out[key] = {"s": time.monotonic() - t, "error": type(exc).__name__, "message": str(exc)}

    def pool(summary):
        return [(rep.actors, rep.actors_dropped) for rep in summary.reports]

    try:
        ingest(corpus, root, ray_address=cluster.address, shard_size=2, short_side=64, n_crops=1,
               show_progress=False)
        s = timed("depth", lambda: label(root, ["depth"], {"depth": depth}, ray_address=cluster.address,
                                         show_progress=False))
        out["depth"].update(ok=s.ok, units=[r.units_done for r in s.reports], pool=pool(s))

        # Requests no node can ever hold: refused before any actor, naming them.
        timed("cpu8", lambda: label(root, ["depth"], {"depth": {**depth, "num_cpus": 8}}, force=True,
                                    ray_address=cluster.address, show_progress=False))
        timed("gpu15", lambda: run_units([0], LabelWorker, (None, []), num_gpus=1.5, name="label depth"))

        # Placement is bounded (PRISM4M_ACTOR_START_TIMEOUT_S=3 in this process's environment).
        # 3 workers asked for, 2 fit: the third is dropped with a warning, the run completes.
        # fault_injector's delay keeps the first two busy past the bound.
        slow = {"num_gpus": 0.5, "delay_s": 2.0, "batch_size": 1}
        s = timed("extra", lambda: label(root, ["fault_injector"], {"fault_injector": slow}, workers=3,
                                         ray_address=cluster.address, show_progress=False))
        out["extra"].update(ok=s.ok, units=[r.units_done for r in s.reports], pool=pool(s))
        # The GPU is held by other work: no actor can be placed, the run fails fast.
        pg = ray.util.placement_group([{"GPU": 1}])
        ray.get(pg.ready(), timeout=60)
        timed("held", lambda: label(root, ["depth"], {"depth": depth}, force=True,
                                    ray_address=cluster.address, show_progress=False))
        ray.util.remove_placement_group(pg)

        # A local root that one node does not share (simulated: that node's view lacks the
        # driver's probe file) is refused before any work, naming the node; the probe is removed.
        import prism4m.pipeline.ray_env as ray_env
        blind = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))
        ray_env._path_visible = lambda p, blind=blind: (ray.get_runtime_context().get_node_id() != blind
                                                        and os.path.exists(p))
        out["shared_checked"] = sorted(ray_env._shared_checked)
        ray_env._shared_checked.clear()
        timed("unshared", lambda: label(root, ["canny_edge"], ray_address=cluster.address, show_progress=False))
        out["probes_left"] = [n for n in os.listdir(root) if n.startswith(".prism4m-shared-probe")]
        out["canny_committed"] = os.path.exists(os.path.join(root, "canny_edge"))
        # the same for an ingest source the workers read: the root is shared, the corpus is not
        ray_env._path_visible = lambda p, blind=blind, src=corpus: (
            not (ray.get_runtime_context().get_node_id() == blind and p.startswith(src)) and os.path.exists(p))
        ray_env._shared_checked.clear()
        timed("unshared_source", lambda: ingest(corpus, root + "-more", ray_address=cluster.address, shard_size=2,
                                                short_side=64, n_crops=1, show_progress=False))
        out["source_probes_left"] = [n for n in os.listdir(corpus) if n.startswith(".prism4m-shared-probe")]
    finally:
        print("RESULT " + json.dumps(out), flush=True)
        ray.shutdown()
        cluster.shutdown()
''')


@pytest.mark.timeout(240)
def test_gpu_fraction_actors_fit_the_gpus_and_unplaceable_ones_fail_fast(photo_corpus, depth_ckpt, tmp_path):
    from prism4m.labelers.testing import write_entry_point_plugin

    root = str(tmp_path / "ds")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    plugin = write_entry_point_plugin(tmp_path / "plugin")
    env = _env(PRISM4M_ACTOR_START_TIMEOUT_S="3", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (plugin, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, str(script), str(photo_corpus), root, depth_ckpt], env=env,
                          capture_output=True, text=True, timeout=220)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])

    # 1 GPU / 0.5 per actor = 2 actors (the 4 CPUs would allow 4); every unit done.
    d = res["depth"]
    assert "error" not in d, d
    assert d["ok"] and d["units"] == [4] and d["pool"] == [[2, 0]], d
    store = DatasetStore(root)
    assert aligned_report(store)["depth"] == 4
    assert store.failed_units("depth") == {}

    # Never fits: refused at once with the request and the node named.
    for key, asked in (("cpu8", "8 CPU + 0.5 GPU"), ("gpu15", "1 CPU + 1.5 GPU")):
        r = res[key]
        assert r.get("error") == "UserError", r
        assert "label depth" in r["message"] and asked in r["message"], r["message"]
        assert "4 CPU + 1 GPU" in r["message"], r["message"]  # the largest node
        assert r["s"] < 5, r

    # An extra actor that cannot be placed is reported after the bound, not awaited.
    e = res["extra"]
    assert "error" not in e and e["ok"] and e["units"] == [4] and e["pool"] == [[3, 1]], e
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]
    warning = [ln for ln in warnings if ln.startswith("warning: label fault_injector")]
    assert len(warnings) == 1 and warning, proc.stderr[-3000:]  # depth's runs: no warning at all
    assert "1 actor asking for 1 CPU + 0.5 GPU each could not be placed in 3 s" in warning[0], warning

    # Nothing can be placed: a clear error at the bound, naming the request (no warning first).
    h = res["held"]
    assert h.get("error") == "ActorPlacementError", h
    assert "label depth: no actor could be placed in 3 s: each asks for 1 CPU + 0.5 GPU" in h["message"], h
    assert "1 node with 4 CPU + 1 GPU" in h["message"] and "free now 4 CPU + 0 GPU" in h["message"], h["message"]
    assert h["s"] < 15, h

    # Every node shared the root: checked once, allowed. A node that does not: refused, named.
    assert res["shared_checked"] == sorted([str(photo_corpus), root]), res["shared_checked"]  # source and root
    u = res["unshared"]
    assert u.get("error") == "UserError", u
    assert root in u["message"] and "127.0.0.1" in u["message"] and "do not share" in u["message"], u["message"]
    assert "s3://" in u["message"] and u["s"] < 30, u
    assert res["probes_left"] == [] and not res["canny_committed"]
    u = res["unshared_source"]
    assert u.get("error") == "UserError" and f"source {photo_corpus}" in u["message"], u
    assert res["source_probes_left"] == []


# --------------------------------------------------------------------------- external head + CLI
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def external_head():
    """`ray start --head` with 4 CPUs and 1 GPU (the issue's machine), on loopback, in its own
    process group and temp dir (never the machine's default Ray, never `ray stop`, which would
    stop every Ray on the machine); yields its address."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    log = open(os.path.join(tmp, "head.log"), "w")
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port=0",
           "--node-ip-address=127.0.0.1", "--num-cpus=4", "--num-gpus=1", "--include-dashboard=false",
           "--dashboard-port=0", "--dashboard-agent-listen-port=0", "--object-store-memory=100000000",
           f"--temp-dir={tmp}", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=_env(**LOOPBACK), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address_file = os.path.join(tmp, "ray_current_cluster")
        deadline = time.monotonic() + 90
        while not os.path.exists(address_file):
            assert head.poll() is None and time.monotonic() < deadline, Path(tmp, "head.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.2)  # written after the head is up
        yield Path(address_file).read_text().strip()
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # the group we started, by id
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        try:
            os.killpg(head.pid, signal.SIGKILL)  # children left after `ray start` exited
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _cli(args: list[str], timeout: int = 150, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRISM4M, *args], env=_env(**LOOPBACK, HF_HUB_OFFLINE="1", **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head_root(external_head, photo_corpus, tmp_path_factory) -> str:
    """A root ingested on the external head; the address comes from RAY_ADDRESS (no flag)."""
    root = str(tmp_path_factory.mktemp("head_root") / "ds")
    proc = _cli(["ingest", str(photo_corpus), root, "--shard-size", "2", "--short-side", "64", "--n-crops", "1",
                 "-q"], RAY_ADDRESS=external_head)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # RAY_ADDRESS is honoured (Ray Jobs set it) but never silently: the joined cluster is named.
    assert f"joined Ray cluster at {external_head}: 1 node, 4 CPUs, 1 GPU (from RAY_ADDRESS)" in proc.stderr, \
        proc.stderr
    return root


@pytest.mark.timeout(200)
def test_cli_label_on_an_external_gpu_head_says_where_and_completes(external_head, head_root, depth_ckpt):
    # The command: 4 CPUs, 1 GPU, depth at half a GPU. It sat at 0/4 units for minutes.
    t = time.monotonic()
    proc = _cli(["label", head_root, "-m", "depth", "-c", f"depth.checkpoint={depth_ckpt}", "-c", "depth.device=cpu",
                 "-c", "depth.num_gpus=0.5", "-c", "depth.batch_size=2", "--ray-address", external_head])
    wall = time.monotonic() - t
    assert proc.returncode == 0, proc.stdout + proc.stderr
    joined = [ln for ln in proc.stderr.splitlines() if ln.startswith("joined Ray cluster at ")]
    assert joined == [f"joined Ray cluster at {external_head}: 1 node, 4 CPUs, 1 GPU"], proc.stderr
    assert "warning:" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    store = DatasetStore(head_root)
    assert aligned_report(store)["depth"] == 4 and store.failed_units("depth") == {}
    assert wall < 120, wall


@pytest.mark.timeout(120)
def test_cli_refuses_a_gpu_request_no_node_can_hold(external_head, head_root, depth_ckpt):
    t = time.monotonic()
    proc = _cli(["label", head_root, "-m", "depth", "--force", "-c", f"depth.checkpoint={depth_ckpt}",
                 "-c", "depth.device=cpu", "-c", "depth.num_gpus=1.5", "--ray-address", external_head], timeout=100)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: label depth: each actor asks for 1 CPU + 1.5 GPU" in proc.stderr, proc.stderr
    assert "1 node with 4 CPU + 1 GPU" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - t < 60


AUTO_NO_CLUSTER = textwrap.dedent('''
    import sys
    import ray._private.services as services

    # Other agents' Ray instances may run on this machine; `auto` would find their processes.
    def no_other_instances():
        return []

    no_other_instances.cache_clear = lambda: None  # Ray clears the real one's cache on shutdown
    services.find_gcs_addresses = no_other_instances
    from prism4m.cli import app

    sys.argv = ["prism4m", *sys.argv[1:]]
    app()
''')


@pytest.mark.timeout(120)
def test_ray_address_without_a_cluster_is_one_line_not_a_wait(photo_corpus, tmp_path):
    empty = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # no ray_current_cluster file in it
    try:
        proc = subprocess.run([sys.executable, "-c", AUTO_NO_CLUSTER, "ingest", str(photo_corpus),
                               str(tmp_path / "ds"), "-q", "--ray-address", "auto"],
                              env=_env(**LOOPBACK, RAY_TMPDIR=empty), capture_output=True, text=True, timeout=100)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and errors[0].startswith("error: --ray-address auto: no running Ray cluster found to join"), \
        proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr

    # An address where nothing listens: Ray itself would retry for minutes.
    t = time.monotonic()
    proc = _cli(["ingest", str(photo_corpus), str(tmp_path / "ds"), "-q", "--ray-address", "127.0.0.1:1"], timeout=100)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: --ray-address 127.0.0.1:1: cannot reach a Ray cluster at 127.0.0.1:1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and time.monotonic() - t < 60, proc.stderr
