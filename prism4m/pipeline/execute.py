"""Run units of work on a pool of Ray actors: retries, failure records, progress.

A *worker* is a plain class with `ready()` (load models; raise to abort the run before any
unit) and `process(unit) -> dict` (do and commit one unit; return {"samples": n, ...}).
Ray gives each worker its declared resources and restarts a dead actor (`max_restarts`),
retrying the call that was running (`max_task_retries`). What we add is small: keep every
actor busy with a short queue, resubmit a unit whose attempt raised, and after the last
attempt hand the unit to `on_failure` and go on with the others.

Two details make worker death safe. A restarted actor is a new process in which Ray runs
`__init__` only, so `ready()` runs again lazily before its first unit. And when an actor
dies, every unit queued on it fails at once although one of them (at most) killed it: each
such unit is retried *alone* on a fresh actor, and only a death while running alone counts
against it — and then it is final, since Ray has already restarted the actor and retried
the call `max_retries` times. A unit that kills its worker cannot take the others down with
it, and costs 2 × (max_retries + 1) worker starts, not their product with our own retries.
Each result records the node and process that produced it.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from prism4m.pipeline.progress import Progress


class WorkerStartupError(RuntimeError):
    """A worker could not start (e.g. missing model weights): nothing was processed."""


@dataclass
class RunReport:
    units_total: int = 0
    units_done: int = 0
    samples: int = 0
    failures: list[dict] = field(default_factory=list)  # {"unit": …, "reason": …, "message": …}
    results: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def _short_error(exc: BaseException) -> tuple[str, str]:
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return type(cause).__name__, str(cause)[-2000:]
    if isinstance(exc, (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError)):
        return "worker_died", str(exc)[-2000:]
    return type(exc).__name__, "".join(traceback.format_exception_only(type(exc), exc))[-2000:]


def _count(value: Any) -> int:
    """A result's invalid/errors entry: a number, or a list of error records (ScanWorker)."""
    return len(value) if isinstance(value, (list, tuple, dict, set)) else int(value or 0)


def _instrumented(worker_cls: type) -> type:
    """`worker_cls` plus: ready() rerun in a restarted actor, node id and pid on each result.

    Defined in a function so that cloudpickle ships it by value; the base class is still
    imported by module path in the worker.
    """
    import ray

    class Instrumented(worker_cls):  # type: ignore[misc, valid-type]
        _prism4m_ready = False

        def ready(self):
            out = super().ready()
            self._prism4m_ready = True
            return out

        def process(self, unit):
            if not self._prism4m_ready:  # a restarted actor: Ray reran __init__ only
                self.ready()
            result = super().process(unit)
            if isinstance(result, dict):
                result = {**result, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
            return result

    Instrumented.__name__ = worker_cls.__name__
    return Instrumented


def run_units(
    units: Sequence[Any],
    worker_cls: type,
    worker_args: tuple = (),
    *,
    workers: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    resources: dict | None = None,
    max_retries: int = 2,
    inflight_per_worker: int = 2,
    progress: Progress | None = None,
    on_failure: Callable[[Any, str, str], None] | None = None,
) -> RunReport:
    import ray

    report = RunReport(units_total=len(units))
    if not units:
        return report
    t0 = time.perf_counter()
    remote_cls = ray.remote(_instrumented(worker_cls)).options(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {},
        max_restarts=max_retries, max_task_retries=max_retries,
    )
    if workers is None:  # as many as the cluster's CPUs fit
        from prism4m.pipeline.ray_env import cluster_cpus

        workers = max(1, int(cluster_cpus() // max(num_cpus, 1e-3)))
    n_actors = max(1, min(workers, len(units)))
    actors = [remote_cls.remote(*worker_args) for _ in range(n_actors)]
    try:
        # Start-up errors (no weights, bad config) abort before any unit is processed.
        try:
            ray.get([a.ready.remote() for a in actors])
        except Exception as exc:  # noqa: BLE001 - re-raised with the worker's message
            reason, msg = _short_error(exc)
            raise WorkerStartupError(f"{worker_cls.__name__} could not start: {msg}") from None

        pending = list(enumerate(units))[::-1]  # stack: pop() yields units in order
        attempts: dict[int, int] = {}
        suspects: set[int] = set()  # units that were on an actor when it died: rerun alone
        inflight: dict[Any, tuple[int, Any, int, Any]] = {}  # future -> (unit idx, unit, actor idx, handle)
        load = [0] * n_actors
        solo = [False] * n_actors  # actor runs a suspect unit: nothing else is queued behind it

        def take(actor_idx: int) -> tuple[int, Any] | None:
            if solo[actor_idx]:
                return None
            if load[actor_idx] == 0:
                return pending.pop()
            for j in range(len(pending) - 1, -1, -1):  # busy actor: next unit that is not a suspect
                if pending[j][0] not in suspects:
                    return pending.pop(j)
            return None

        def fill() -> None:
            # Round robin, one slot per actor per pass: 2 units on 2 actors run in parallel
            # (filling actor 0's whole queue first left actor 1 idle).
            placed = True
            while pending and placed:
                placed = False
                for a in range(n_actors):
                    if not pending or load[a] >= inflight_per_worker:
                        continue
                    item = take(a)
                    if item is None:
                        continue
                    idx, unit = item
                    fut = actors[a].process.remote(unit)
                    inflight[fut] = (idx, unit, a, actors[a])
                    load[a] += 1
                    solo[a] = idx in suspects
                    placed = True

        def fail(idx: int, unit: Any, reason: str, msg: str) -> None:
            report.failures.append({"unit": unit, "reason": reason, "message": msg})
            if on_failure is not None:
                on_failure(unit, reason, msg)
            if progress:
                progress.update(units=1, failed=1)

        fill()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            fut = ready[0]
            idx, unit, actor_idx, handle = inflight.pop(fut)
            load[actor_idx] -= 1
            if load[actor_idx] == 0:
                solo[actor_idx] = False
            try:
                result = ray.get(fut)
            except Exception as exc:  # noqa: BLE001 - a unit's failure must not stop the others
                reason, msg = _short_error(exc)
                if reason == "worker_died":
                    if actors[actor_idx] is handle:
                        # Ray already restarted and retried; replace the actor once (killing it
                        # first, so a half-alive one cannot keep holding its resources).
                        try:
                            ray.kill(handle, no_restart=True)
                        except Exception:  # noqa: BLE001 - already gone
                            pass
                        actors[actor_idx] = remote_cls.remote(*worker_args)
                    if idx not in suspects:
                        suspects.add(idx)  # first death: maybe a neighbour's fault; rerun alone
                        pending.append((idx, unit))
                        fill()
                        continue
                    # It died alone, after Ray's own restarts and retries: its own fault, final.
                    attempts[idx] = max_retries
                attempts[idx] = attempts.get(idx, 0) + 1
                if attempts[idx] <= max_retries:
                    pending.append((idx, unit))
                else:
                    fail(idx, unit, reason, msg)
            else:
                report.units_done += 1
                report.samples += int(result.get("samples", 0))
                report.results.append(result)
                if progress:
                    progress.update(units=1, samples=int(result.get("samples", 0)),
                                    invalid=_count(result.get("invalid", result.get("errors", 0))))
            fill()
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if progress:
            progress.close()
    report.wall_s = time.perf_counter() - t0
    return report
