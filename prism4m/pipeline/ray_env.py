"""Starting or joining Ray the same way from the CLI, the API and the tests.

Locally every socket stays on loopback (ENVIRONMENT.md): the env var below makes the local
node bind 127.0.0.1. On a cluster the user passes `--ray-address auto` and nothing else changes.

Which Ray a command uses:
- no address: a private local instance (`address="local"`), never a stray one that happens to
  run on the machine (Ray's own default, `address=None`, would join the latest `ray start`);
- `RAY_ADDRESS` set and no address given: that cluster, as if passed as the address. This is
  how Ray Jobs tell a driver where to run (`ray job submit` sets it), so ignoring it would run
  a job on one private node; joining is never silent (see below). A caller asking for a local
  Ray of a given size (`num_cpus`, as the test session does) still gets its own;
- an address (`auto`, `host:port`): that cluster; the joined cluster (address, nodes, CPUs,
  GPUs) is printed to stderr, and a cluster that cannot be found is a `UserError`.

Sizing: `actors_that_fit` counts actors by every resource they ask for, node by node (an actor
never spans nodes), so a GPU-fraction group gets as many actors as the GPUs hold, not one per
CPU; `unfit_request` names a request no node can ever hold.

Local paths: on a multi-node cluster `require_shared` refuses a local root that some node does
not share (a probe file the driver writes, looked for by a task pinned to each node).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

_started_here = False


def set_loopback_env() -> None:
    """Must run before `import ray`: Ray reads these when it is imported."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray runs workers at nice 15 by default; on a shared box that halves labeler throughput
    # against the driver. Our workers are the job, so run them at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> float:
    """Initialise Ray if needed; returns the seconds it took (0 when already running)."""
    global _started_here
    set_loopback_env()
    import ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    # A caller that sizes a local Ray (num_cpus: the test session) gets one whatever RAY_ADDRESS says.
    from_env = not address and num_cpus is None and bool(os.environ.get("RAY_ADDRESS"))
    if from_env:
        address = os.environ["RAY_ADDRESS"]
    if address:
        from prism4m.errors import UserError

        given = f"{'RAY_ADDRESS' if from_env else '--ray-address'} {address}"
        target = _resolve(address)
        if target is None:
            raise UserError(f"{given}: no running Ray cluster found to join; start one with `ray start --head` "
                            f"or omit the address to run on a local Ray")
        # Ray retries an unreachable GCS for minutes: a plain TCP check answers in seconds.
        why = _unreachable(target)
        if why:
            raise UserError(f"{given}: cannot reach a Ray cluster at {target} ({why})")
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise UserError(f"{given}: could not join the Ray cluster ({_first_line(exc)})") from None
        print(f"joined Ray cluster at {describe_cluster()}"
              + (" (from RAY_ADDRESS)" if from_env else ""), file=sys.stderr, flush=True)
    else:
        # address="local": always start our own instance, never join a stray one on this machine
        # (it also makes Ray ignore RAY_ADDRESS; handled above).
        set_worker_malloc_env()
        with _lean_local_node():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 2**20)
        _started_here = True
    return time.perf_counter() - t0


#: glibc malloc settings for the workers of a local Ray (they inherit the raylet's environment)
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}


def set_worker_malloc_env() -> None:
    """Keep image-sized numpy temporaries on the heap in Ray workers.

    glibc serves a large allocation (above 128 KB) with a fresh mmap, which the kernel
    zero-fills page by page, unless an earlier free raised its threshold. In a plain process
    that happens after the first few images; in a Ray actor, from its second call on, the
    threshold was back down: a labeler's float copies of every image cost half a million page
    faults per 150 images, and the cheap labelers ran 20-50% slower than the same code outside
    Ray (metadata: 1.24 s vs 0.73 s, paired). Fixed thresholds at glibc's own ceiling (32 MB)
    keep them on the heap. Set before a local Ray starts; a cluster's nodes need them in the
    environment of `ray start` (README, "on a Ray cluster"). A user's own values win.
    """
    for key, value in WORKER_MALLOC_ENV.items():
        os.environ.setdefault(key, value)


@contextmanager
def _lean_local_node():
    """A private local Ray without two head processes that nothing here uses.

    ``ray.init`` starts, besides the GCS, the raylet and the dashboard's API server, an
    autoscaler monitor (a fixed local node has nothing to scale) and a log monitor (we pass
    ``log_to_driver=False``: it has no one to forward to). Each is a Python process importing
    Ray: on a 2-core box they took ~1.8 s of the ~5.7 s a start, two actors and a stop took
    (whole process, paired runs). Ray offers no ``ray.init`` argument for them, so its node
    parameters are adjusted for this one call; if Ray's internals moved, the call runs as
    before. The API server stays: Ray Train (``train_with_ray`` in the same process) waited
    ~10 s more without it. ``PRISM4M_RAY_FULL_HEAD=1`` keeps both.
    """
    if os.environ.get("PRISM4M_RAY_FULL_HEAD") == "1":
        yield
        return
    try:
        import ray._private.parameter as ray_parameter

        params_init = ray_parameter.RayParams.__init__
    except (ImportError, AttributeError):
        yield
        return

    def lean_params(self, *args, **kwargs):
        params_init(self, *args, **kwargs)
        self.no_monitor = True
        self.include_log_monitor = False

    ray_parameter.RayParams.__init__ = lean_params
    try:
        yield
    finally:
        ray_parameter.RayParams.__init__ = params_init


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolve(address: str) -> str | None:
    """The GCS address `address` stands for (`auto`: the latest `ray start` on this machine, or
    a running instance); None when `auto` finds nothing. Unknown forms are returned as given."""
    if address != "auto":
        return address
    try:
        from ray._private import services  # where ray.init resolves "auto" itself
    except ImportError:  # moved in another Ray: let ray.init judge
        return address
    try:
        return services.canonicalize_bootstrap_address(address, temp_dir=None) or address
    except ConnectionError:
        return None
    except Exception:  # noqa: BLE001 - a changed private API: let ray.init judge
        return address


def _unreachable(address: str, timeout_s: float = 10.0) -> str | None:
    """Why no TCP connection opens to `host:port` (None when one does, or for other forms)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def describe_cluster() -> str:
    """'ADDRESS: N nodes, C CPUs, G GPUs' of the Ray this process is connected to."""
    import ray

    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only for display
        address = "?"
    nodes = alive_node_resources()
    total = ray.cluster_resources()
    def count(n: float, what: str) -> str:
        return f"{_num(n)} {what}{'' if n == 1 else 's'}"

    return (f"{address}: {count(len(nodes), 'node')}, {count(total.get('CPU', 0), 'CPU')}, "
            f"{count(total.get('GPU', 0), 'GPU')}")


def actor_start_timeout_s() -> float:
    """How long an actor may wait to be placed before it is reported and dropped."""
    return float(os.environ.get("PRISM4M_ACTOR_START_TIMEOUT_S", ACTOR_START_TIMEOUT_S))


ACTOR_START_TIMEOUT_S = 60.0

# Ray stores resource quantities in fixed point with 4 decimals: compare in those units, or
# 0.6 GPU / 0.2 per actor gives 2.9999… actors.
_FIXED = 10_000


def resource_request(num_cpus: float = 1.0, num_gpus: float = 0.0, memory: float | None = None,
                     resources: dict | None = None) -> dict[str, float]:
    """What one actor asks for, in Ray's resource names (zero entries left out)."""
    req = {"CPU": num_cpus, "GPU": num_gpus, "memory": memory or 0.0, **(resources or {})}
    return {k: float(v) for k, v in req.items() if v and float(v) > 0}


def _num(x: float) -> str:
    return f"{x:g}"


def describe_request(req: dict[str, float]) -> str:
    """'1 CPU + 0.5 GPU + 2 GiB memory' (what one actor asks for)."""
    parts = []
    for k, v in req.items():
        if k in ("memory", "object_store_memory"):
            parts.append(f"{v / 2**30:.3g} GiB {k.replace('_', ' ')}")
        else:
            parts.append(f"{_num(v)} {k}")
    return " + ".join(parts) or "no resources"


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node (what an actor can ever get there)."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _fit_on_node(total: dict[str, float], req: dict[str, float]) -> int:
    if not req:  # asks for nothing: one per CPU, like the default sizing always did
        return int(total.get("CPU", 0))
    return min(int(round(total.get(k, 0.0) * _FIXED)) // max(1, int(round(v * _FIXED))) for k, v in req.items())


def actors_that_fit(num_cpus: float = 1.0, num_gpus: float = 0.0, memory: float | None = None,
                    resources: dict | None = None, *, nodes: list[dict] | None = None) -> int:
    """How many actors of this request the cluster holds now: per alive node the number that fit
    there whole (every requested resource counts), summed over nodes."""
    req = resource_request(num_cpus, num_gpus, memory, resources)
    nodes = alive_node_resources() if nodes is None else nodes
    return sum(_fit_on_node(n, req) for n in nodes)


def describe_nodes(nodes: list[dict[str, float]], keys: tuple[str, ...] = ("CPU", "GPU")) -> str:
    """'1 node with 0 CPU, 2 nodes with 4 CPU + 1 GPU' (node shapes, for error messages)."""
    shapes: dict[str, int] = {}
    for n in nodes:
        shape = " + ".join(f"{_num(n.get(k, 0.0))} {k}" for k in keys) if keys else "?"
        shapes[shape] = shapes.get(shape, 0) + 1
    return ", ".join(f"{c} node{'s' if c != 1 else ''} with {shape}" for shape, c in shapes.items()) or "no nodes"


def unfit_request(what: str, req: dict[str, float], nodes: list[dict] | None = None) -> str | None:
    """None when some alive node can hold one actor of `req`; else the message saying why not."""
    nodes = alive_node_resources() if nodes is None else nodes
    if any(_fit_on_node(n, req) > 0 for n in nodes):
        return None
    keys = tuple(dict.fromkeys(("CPU", "GPU", *req)))
    shown = [{k: (v / 2**30 if k.endswith("memory") else v) for k, v in n.items()} for n in nodes]
    unit = " (memory in GiB)" if any(k.endswith("memory") for k in keys) else ""
    return (f"{what}: each actor asks for {describe_request(req)}, which no node of this cluster can hold "
            f"(an actor runs on one node; nodes{unit}: {describe_nodes(shown, keys)}); lower the request "
            f"or add a node that large")


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def assigned_cpus() -> int:
    """Inside a Ray actor or task: the whole CPUs it was given (at least 1)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def limit_threads_to_assigned_cpus() -> int:
    """Inside a Ray actor: use as many intra-op threads as CPUs the actor was given.

    OpenCV ignores OMP_NUM_THREADS and starts one thread per core in every process, so two
    1-CPU actors on a 2-core box would run four busy threads and slow each other down.
    """
    n = 1
    try:
        import ray

        if ray.is_initialized():
            n = assigned_cpus()
    except Exception:  # noqa: BLE001 - outside an actor: leave the defaults alone
        return 0
    import cv2

    cv2.setNumThreads(n)
    try:
        import sys

        if "torch" in sys.modules:  # only if a labeler already needs it: importing torch is slow
            sys.modules["torch"].set_num_threads(n)
    except Exception:  # noqa: BLE001
        pass
    return n


# ---------------------------------------------------------------- local paths on a cluster
#: local paths already seen from every node by this process (one check per path per driver)
_shared_checked: set[str] = set()
SHARED_CHECK_TIMEOUT_S = 30.0


def _path_visible(path: str) -> bool:
    """Runs on a node: does the driver's probe file exist there?"""
    return os.path.exists(path)


def nodes_not_seeing(directory: str, timeout_s: float = SHARED_CHECK_TIMEOUT_S) -> list[str]:
    """Addresses of the alive nodes on which the local ``directory`` the driver sees is not the
    same directory: the driver writes a probe file into it and a zero-CPU task pinned to each
    node looks for it. A node that does not answer within ``timeout_s`` is not counted."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return []
    probe = os.path.join(directory, f".prism4m-shared-probe-{uuid.uuid4().hex[:12]}")
    try:
        with open(probe, "w") as f:
            f.write("written by the prism4m driver to see which Ray nodes share this directory\n")
    except OSError:  # a read-only source, say: no probe, no verdict (the workers' reads will tell)
        return []
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(_path_visible)
        refs = {check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(probe): n.get("NodeManagerAddress", n["NodeID"][:12]) for n in nodes}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        blind = []
        for ref in done:
            try:
                if not ray.get(ref):
                    blind.append(refs[ref])
            except Exception:  # noqa: BLE001 - a node that cannot run the check is not evidence
                continue
        return sorted(blind)
    finally:
        os.remove(probe)


def require_shared(url: str, what: str = "root") -> None:
    """Refuse a local ``url`` that some node of a multi-node cluster does not share: its workers
    would write their shards to their own disks (lost to the driver) or read nothing."""
    from fsspec.utils import get_protocol

    if get_protocol(url) not in ("file", "local"):
        return  # an object store or remote filesystem: every node reaches the same thing
    path = url.split("://", 1)[-1]
    if os.path.isfile(path):  # a source that is one tar or Parquet file: its directory
        path = os.path.dirname(path) or "."
    if path in _shared_checked or not os.path.isdir(path):
        return
    blind = nodes_not_seeing(path)
    if blind:
        from prism4m.errors import UserError

        raise UserError(f"{what} {path} is a local directory that Ray node(s) {', '.join(blind)} do not share: "
                        "their workers would write to (or read from) their own disks. On a multi-node cluster "
                        "use a shared filesystem mounted at the same path on every node, or an object store "
                        "(s3://…, gs://…)")
    _shared_checked.add(path)
