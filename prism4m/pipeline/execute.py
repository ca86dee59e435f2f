"""Run units of work on a pool of Ray actors: retries, failure records, progress.

A *worker* is a plain class with `ready()` (load models; raise to abort the run before any
unit) and `process(unit) -> dict` (do and commit one unit; return {"samples": n, ...}).
Ray gives each worker its declared resources and restarts a dead actor (`max_restarts`),
retrying the call that was running (`max_task_retries`). What we add is small: keep every
actor busy with a short queue, resubmit a unit whose attempt raised, and after the last
attempt hand the unit to `on_failure` and go on with the others.
"""

from __future__ import annotations

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
    if isinstance(exc, (rex.RayActorError, rex.WorkerCrashedError)):
        return "worker_died", str(exc)[-2000:]
    return type(exc).__name__, "".join(traceback.format_exception_only(type(exc), exc))[-2000:]


def run_units(
    units: Sequence[Any],
    worker_cls: type,
    worker_args: tuple = (),
    *,
    workers: int = 1,
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
    remote_cls = ray.remote(worker_cls).options(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or {},
        max_restarts=max_retries, max_task_retries=max_retries,
    )
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
        inflight: dict[Any, tuple[int, Any, int]] = {}  # future -> (unit idx, unit, actor idx)
        load = [0] * n_actors

        def submit(actor_idx: int) -> None:
            idx, unit = pending.pop()
            fut = actors[actor_idx].process.remote(unit)
            inflight[fut] = (idx, unit, actor_idx)
            load[actor_idx] += 1

        def fill() -> None:
            for a in range(n_actors):
                while pending and load[a] < inflight_per_worker:
                    submit(a)

        fill()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            fut = ready[0]
            idx, unit, actor_idx = inflight.pop(fut)
            load[actor_idx] -= 1
            try:
                result = ray.get(fut)
            except Exception as exc:  # noqa: BLE001 - a unit's failure must not stop the others
                reason, msg = _short_error(exc)
                attempts[idx] = attempts.get(idx, 0) + 1
                if reason == "worker_died":
                    # Ray already restarted and retried; a permanently dead actor is replaced.
                    actors[actor_idx] = remote_cls.remote(*worker_args)
                if attempts[idx] <= max_retries:
                    pending.append((idx, unit))
                else:
                    report.failures.append({"unit": unit, "reason": reason, "message": msg})
                    if on_failure is not None:
                        on_failure(unit, reason, msg)
                    if progress:
                        progress.update(units=1, failed=1)
            else:
                report.units_done += 1
                report.samples += int(result.get("samples", 0))
                report.results.append(result)
                if progress:
                    progress.update(units=1, samples=int(result.get("samples", 0)))
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
