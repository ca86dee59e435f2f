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

Sizing and start-up never wait for ever. Without a worker count the pool is as large as the
cluster holds by *every* resource an actor asks for (a 0.5-GPU actor on a 1-GPU node: 2, not
one per CPU); a request no node can hold is refused (`UserError`) before any actor exists.
Actors start asynchronously and each takes units once its own ready() returns; one whose
resources cannot be reserved within `PRISM4M_ACTOR_START_TIMEOUT_S` (60 s) is reported and
dropped, and if none can, the run fails (`ActorPlacementError`) instead of waiting.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from prism4m.errors import UserError
from prism4m.pipeline.progress import Progress


class WorkerStartupError(RuntimeError):
    """A worker could not start (e.g. missing model weights): nothing was processed."""


class ActorPlacementError(WorkerStartupError, UserError):
    """No actor of a group could be placed within the start-up bound: the cluster is full or
    lacks what the actors ask for. A user error too (the CLI prints it as one line)."""


@dataclass
class RunReport:
    units_total: int = 0
    units_done: int = 0
    samples: int = 0
    failures: list[dict] = field(default_factory=list)  # {"unit": …, "reason": …, "message": …}
    results: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    actors: int = 0  # size of the pool started (what the cluster fits, or the worker count given)
    actors_dropped: int = 0  # of them, not placed within the start-up bound

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


def is_staged(worker_cls: type) -> bool:
    """Whether a worker does its units in three steps (prepare, compute, finish) that an actor
    can stream, rather than in one process() call."""
    return all(callable(getattr(worker_cls, m, None)) for m in ("prepare", "compute", "finish"))


def _instrumented(worker_cls: type) -> type:
    """`worker_cls` plus: ready() rerun in a restarted actor, node id and pid on each result.

    Defined in a function so that cloudpickle ships it by value; the base class is still
    imported by module path in the worker.
    """
    import ray

    class Instrumented(worker_cls):  # type: ignore[misc, valid-type]
        _prism4m_ready = False
        _prism4m_ready_error: BaseException | None = None

        def __init__(self, *args, **kwargs):
            import threading  # made in the actor: locks do not travel with the pickled class

            self._prism4m_ready_lock = threading.Lock()  # a threaded (streaming) actor runs calls at once
            self._prism4m_lock = threading.Lock()        # guards the in-flight count
            self._prism4m_device = threading.Lock()      # one compute at a time: the device's turn
            # The CPU steps (prepare, finish) run at most as many at a time as the actor has CPUs:
            # three units decoding at once on one CPU would delay the first compute, and each other.
            from prism4m.pipeline.ray_env import assigned_cpus

            self._prism4m_cpu = threading.Semaphore(assigned_cpus())
            self._prism4m_in_flight = self._prism4m_max_in_flight = 0
            super().__init__(*args, **kwargs)

        def ready(self):
            """The worker's ready(), once per process whoever asks first: the driver, or a unit
            that arrived before it returned (a streamed unit, or any unit on a restarted actor,
            in which Ray reran __init__ only). A failure is kept and raised to every caller."""
            with self._prism4m_ready_lock:
                if self._prism4m_ready_error is not None:
                    raise self._prism4m_ready_error
                if not self._prism4m_ready:
                    try:
                        self._prism4m_ready_value = super().ready()
                    except BaseException as exc:
                        self._prism4m_ready_error = exc
                        raise
                    self._prism4m_ready = True
            return self._prism4m_ready_value

        def process(self, unit):
            if staged:
                result = self._staged(unit)
            else:
                self.ready()
                result = super().process(unit)
            if isinstance(result, dict):
                result = {**result, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
            return result

        def _staged(self, unit):
            """prepare → compute → finish, the compute of one unit at a time (the device's
            turn), while other calls of this threaded actor prepare or finish theirs."""
            with self._prism4m_lock:
                self._prism4m_in_flight += 1
                in_flight = self._prism4m_in_flight
                self._prism4m_max_in_flight = max(self._prism4m_max_in_flight, in_flight)
            try:
                if self._prism4m_ready_error is not None:
                    raise self._prism4m_ready_error  # start-up failed: no point reading the unit
                with self._prism4m_cpu:
                    state = self.prepare(unit)  # reads only: may run while the models load
                self.ready()
                with self._prism4m_device:
                    t0 = time.time()
                    state = self.compute(state)
                    span = (t0, time.time())
                with self._prism4m_cpu:
                    result = self.finish(state)
            finally:
                with self._prism4m_lock:
                    self._prism4m_in_flight -= 1
            if isinstance(result, dict):
                result = {**result, "compute_span": span, "max_in_flight": self._prism4m_max_in_flight}
            return result

    staged = is_staged(worker_cls)
    Instrumented.__name__ = worker_cls.__name__
    return Instrumented


def _warn(message: str, progress: Progress | None) -> None:
    stream = progress.stream if progress else sys.stderr
    if progress is not None and progress.tty:
        stream.write("\r\x1b[K")  # clear the progress line being redrawn
    stream.write(message + "\n")
    stream.flush()


def run_units(
    units: Sequence[Any],
    worker_cls: type,
    worker_args: tuple = (),
    *,
    workers: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory: float | None = None,
    resources: dict | None = None,
    max_retries: int = 2,
    inflight_per_worker: int = 2,
    progress: Progress | None = None,
    on_failure: Callable[[Any, str, str], None] | None = None,
    name: str | None = None,
    start_timeout_s: float | None = None,
    pipeline_depth: int = 1,
) -> RunReport:
    """Process `units` on actors of `worker_cls`; `workers=None`: as many as the cluster holds.

    `name` names the actor group in messages (default: the progress description). An actor that
    is not placed within `start_timeout_s` (default: `ray_env.actor_start_timeout_s()`) is
    reported and dropped; if none is placed, `ActorPlacementError`.

    A worker with `prepare`/`compute`/`finish` instead of `process` can be *streamed*: with
    `pipeline_depth` > 1 each actor runs that many units at once in threads, one `compute`
    at a time, so reading/decoding the next unit and encoding/writing the previous one
    overlap the model (the memory in flight is `pipeline_depth` units per actor).
    """
    import ray

    from prism4m.pipeline import ray_env

    report = RunReport(units_total=len(units))
    if not units:
        return report
    t0 = time.perf_counter()
    what = name or (progress.desc if progress else worker_cls.__name__)
    request = ray_env.resource_request(num_cpus, num_gpus, memory, resources)
    asks = ray_env.describe_request(request)
    nodes = ray_env.alive_node_resources()
    # A request no node can hold would wait for ever (Ray keeps such actors pending): refuse it
    # before any actor exists.
    unfit = ray_env.unfit_request(what, request, nodes)
    if unfit:
        raise UserError(unfit)
    if workers is None:  # every resource the actor asks for counts, node by node
        workers = ray_env.actors_that_fit(num_cpus, num_gpus, memory, resources, nodes=nodes)
    n_actors = report.actors = max(1, min(workers, len(units)))
    timeout_s = ray_env.actor_start_timeout_s() if start_timeout_s is None else float(start_timeout_s)
    actor_cls = ray.remote(_instrumented(worker_cls))
    actor_opts = dict(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory or None, resources=resources or {},
                      max_restarts=max_retries, max_task_retries=max_retries)
    streamed = pipeline_depth > 1 and is_staged(worker_cls)
    if streamed:
        # A threaded actor: its calls overlap (its ready() call takes a thread of its own).
        actor_opts["max_concurrency"] = pipeline_depth + 1
        inflight_per_worker = max(inflight_per_worker, pipeline_depth)

    # Actor slots. Start-up is asynchronous: an actor takes units as soon as its own ready()
    # has returned, so an actor that cannot be placed (no free GPU) delays nothing. Each actor
    # reserves its resources through a one-bundle placement group first: `pg.ready()` says
    # "placed" the moment the cluster has set them aside (a worker process starting or models
    # loading are not placement), and only that wait is bounded in time.
    actors: list[Any] = [None] * n_actors
    groups: list[Any] = [None] * n_actors  # each actor's placement group
    is_ready = [False] * n_actors
    # A streamed actor takes units as soon as it is placed: it reads and decodes them while its
    # models load (its units wait for its ready() inside the actor). Not after a unit failed
    # on it before ready() returned: that is a start-up failure, which ready()'s answer reports.
    early = [False] * n_actors  # set by start()
    placing: dict[Any, int] = {}  # pg.ready() ref -> slot, until its resources are reserved
    readying: dict[Any, int] = {}  # ready() ref -> slot, until ready() returns
    created_at = [0.0] * n_actors

    def start(slot: int) -> None:
        opts = dict(actor_opts)
        if request:  # an actor asking for nothing needs no reservation (and Ray refuses empty bundles)
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            groups[slot] = ray.util.placement_group([request])
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(groups[slot], 0)
            placing[groups[slot].ready()] = slot
        created_at[slot] = time.monotonic()
        actors[slot] = actor_cls.options(**opts).remote(*worker_args)
        is_ready[slot] = False
        early[slot] = streamed
        readying[actors[slot].ready.remote()] = slot

    def release(slot: int) -> None:
        """Kill a slot's actor and hand back its reservation (killing alone would keep it held)."""
        for refs in (placing, readying):
            for ref in [r for r, i in refs.items() if i == slot]:
                del refs[ref]
        if actors[slot] is not None:
            try:
                ray.kill(actors[slot], no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if groups[slot] is not None:
            try:
                ray.util.remove_placement_group(groups[slot])
            except Exception:  # noqa: BLE001 - already removed
                pass
        actors[slot] = groups[slot] = None
        is_ready[slot] = False

    def drop_unplaced() -> None:
        """Drop actors not placed within the bound; fail fast if no actor could be placed at all."""
        now = time.monotonic()
        grace = min(1.0, timeout_s / 10)  # actors started together are judged together
        late = sorted({i for i in placing.values() if now - created_at[i] >= timeout_s - grace})
        if not late:
            return
        placed = sum(a is not None for a in actors) - len(set(placing.values()))
        if placed == 0:
            late = sorted(set(placing.values()))
        for i in late:
            release(i)
        report.actors_dropped += len(late)
        cluster = (f"cluster: {ray_env.describe_nodes(ray_env.alive_node_resources())}; free now "
                   f"{_free(ray.available_resources())}")
        if placed == 0:
            raise ActorPlacementError(
                f"{what}: no actor could be placed in {timeout_s:g} s: each asks for {asks}; {cluster} "
                f"(other work holds the rest, or the cluster lacks it; the bound is "
                f"PRISM4M_ACTOR_START_TIMEOUT_S)")
        _warn(f"warning: {what}: {len(late)} actor{'s' if len(late) != 1 else ''} asking for {asks} "
              f"each could not be placed in {timeout_s:g} s and {'were' if len(late) != 1 else 'was'} "
              f"dropped; continuing on {sum(a is not None for a in actors)} ({cluster})", progress)

    inflight: dict[Any, tuple[int, Any, int, Any]] = {}  # future -> (unit idx, unit, actor idx, handle)
    try:
        for slot in range(n_actors):
            start(slot)
        pending = list(enumerate(units))[::-1]  # stack: pop() yields units in order
        attempts: dict[int, int] = {}
        suspects: set[int] = set()  # units that were on an actor when it died: rerun alone
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

        def servable(a: int) -> bool:
            return actors[a] is not None and (is_ready[a] or (early[a] and a not in placing.values()))

        def fill() -> None:
            # Round robin, one slot per actor per pass: 2 units on 2 actors run in parallel
            # (filling actor 0's whole queue first left actor 1 idle).
            # A unit queued behind a busy actor waits for it while another actor idles or is still
            # starting: the first actor ready took both shards of a 2-shard ingest and ran them one
            # after the other. So each pass serves the least loaded actors first, and a busy actor
            # takes another unit only while more are pending than the actors still starting can
            # take, one each.
            starting = sum(1 for a in range(n_actors) if actors[a] is not None and not servable(a))
            placed = True
            while pending and placed:
                placed = False
                for a in sorted(range(n_actors), key=lambda i: load[i]):
                    if not pending or not servable(a) or load[a] >= inflight_per_worker:
                        continue
                    if load[a] > 0 and len(pending) <= starting:
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

        while inflight or pending:
            if not (inflight or placing or readying):  # every actor is gone: cannot happen silently
                raise ActorPlacementError(f"{what}: no actor left to run {len(pending)} unit(s); each asks "
                                          f"for {asks}")
            timeout = None  # bounded only while some actor waits to be placed
            if placing:
                timeout = max(0.0, min(created_at[i] for i in placing.values()) + timeout_s - time.monotonic())
            ready, _ = ray.wait([*inflight, *placing, *readying], num_returns=1, timeout=timeout)
            if not ready:
                drop_unplaced()
                continue
            fut = ready[0]
            if fut in placing:  # its resources are reserved: the actor is starting there
                del placing[fut]
                fill()  # a streamed actor takes units now
                continue
            if fut in readying:
                slot = readying.pop(fut)
                try:
                    ray.get(fut)
                except Exception as exc:  # noqa: BLE001 - re-raised with the worker's message
                    # Start-up errors (no weights, bad config) abort the run: every actor runs the
                    # same ready(), and the first to fail does so before it gets any unit.
                    reason, msg = _short_error(exc)
                    raise WorkerStartupError(f"{worker_cls.__name__} could not start: {msg}") from None
                is_ready[slot] = True
                fill()
                continue
            idx, unit, actor_idx, handle = inflight.pop(fut)
            load[actor_idx] -= 1
            if load[actor_idx] == 0:
                solo[actor_idx] = False
            try:
                result = ray.get(fut)
            except Exception as exc:  # noqa: BLE001 - a unit's failure must not stop the others
                reason, msg = _short_error(exc)
                if reason != "worker_died" and not is_ready[actor_idx] and actors[actor_idx] is handle:
                    # Early on a streamed actor whose ready() has not answered: most likely its
                    # start-up failed (the answer aborts the run). Not the unit's attempt.
                    early[actor_idx] = False
                    pending.append((idx, unit))
                    fill()
                    continue
                if reason == "worker_died":
                    if actors[actor_idx] is handle:
                        # Ray already restarted and retried; replace the actor once (killing it
                        # first, so a half-alive one cannot keep holding its resources). The new
                        # one starts like the first ones: units once it is ready, placement bounded.
                        release(actor_idx)
                        start(actor_idx)
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
    except Exception:
        _collect_quietly([*inflight, *readying], ABANDONED_CALLS_WAIT_S)  # before their actors die
        raise
    finally:
        for slot in range(n_actors):
            release(slot)
        _collect_quietly([*inflight, *readying], 1.0)  # the calls their death ended
        if progress:
            progress.close()
    report.wall_s = time.perf_counter() - t0
    return report


#: how long an aborted run waits for the calls already sent to finish before killing their actors
ABANDONED_CALLS_WAIT_S = 3.0


def _collect_quietly(refs: list, timeout_s: float) -> None:
    """Fetch, and drop, what the calls of an aborted run answer within ``timeout_s``.

    Ray logs the error of a call whose answer nobody fetched ("Unhandled error", traceback and
    all), and warns of retries for each call queued on an actor that is killed: an aborted run
    (a labeler without weights, say) buried its one-line message under screens of both. A
    streamed actor's other calls fail at once after its ready() did; a call still computing on
    another actor is waited for this long at most, then killed with it.
    """
    import ray

    if not refs:
        return
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in done:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - the run's own error is what the user gets
            pass


def _free(resources: dict) -> str:
    return " + ".join(f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))  # Ray omits zeros
