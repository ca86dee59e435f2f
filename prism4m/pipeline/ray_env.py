"""Starting or joining Ray the same way from the CLI, the API and the tests.

Locally every socket stays on loopback (ENVIRONMENT.md): the env var below makes the local
node bind 127.0.0.1. On a cluster the user passes `--ray-address auto` and nothing else changes.
"""

from __future__ import annotations

import os
import time

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
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always start our own instance, never join a stray one on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20)
        _started_here = True
    return time.perf_counter() - t0


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def limit_threads_to_assigned_cpus() -> int:
    """Inside a Ray actor: use as many intra-op threads as CPUs the actor was given.

    OpenCV ignores OMP_NUM_THREADS and starts one thread per core in every process, so two
    1-CPU actors on a 2-core box would run four busy threads and slow each other down.
    """
    n = 1
    try:
        import ray

        if ray.is_initialized():
            n = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
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
