"""A unit whose worker keeps dying (a segfault or OOM on one sample) is narrowed to the sample.

`run_units` already reruns a unit alone after its actor died, so a neighbour cannot take it
down; a unit that still kills its worker alone fails with reason ``worker_died``. Here such a
unit is bisected with *probe* units (same work on a subset of its samples, nothing committed)
until the samples that kill the worker are single keys; the unit then runs once more with
those keys skipped — each becomes an invalid record with reason ``worker_died`` and its key —
and the rest of the shard commits. A death that does not come back in the probes (transient)
just gets that one more try.

Units opt in by having ``probe_keys`` and ``skip_keys`` fields (dataclasses.replace sets
them); the worker processes only ``probe_keys`` without committing when they are set, and
records ``skip_keys`` as worker_died without processing them.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Sequence

from prism4m.pipeline.execute import RunReport, run_units
from prism4m.pipeline.progress import Progress

WORKER_DIED = "worker_died"


def run_narrowing_deaths(units: Sequence[Any], worker_cls: type, worker_args: tuple, *,
                         keys_of: Callable[[Any], list[str]], max_retries: int = 2,
                         on_failure: Callable[[Any, str, str], None] | None = None,
                         progress: Progress | None = None, describe: str = "", **run_kwargs) -> RunReport:
    """`run_units`, plus: units that failed with worker_died are narrowed and rerun."""
    died: list[dict] = []

    def defer_deaths(unit: Any, reason: str, message: str) -> None:
        if reason == WORKER_DIED:
            died.append({"unit": unit, "reason": reason, "message": message})
        elif on_failure is not None:
            on_failure(unit, reason, message)

    run_kwargs.setdefault("name", describe or None)
    report = run_units(units, worker_cls, worker_args, max_retries=max_retries, on_failure=defer_deaths,
                       progress=progress, **run_kwargs)
    if not died:
        return report
    report.failures = [f for f in report.failures if f["reason"] != WORKER_DIED]
    finals = []
    for fail in died:
        unit = fail["unit"]
        keys = keys_of(unit)
        print(f"{describe or worker_cls.__name__} shard-{getattr(unit, 'shard', '?')}: a sample kills the worker; "
              f"narrowing {len(keys)} samples down to it", file=sys.stderr, flush=True)
        culprits = _find_culprits(unit, keys, worker_cls, worker_args, run_kwargs)
        found = ", ".join(sorted(culprits)) if culprits else "none (the death did not recur; retrying the shard)"
        print(f"{describe or worker_cls.__name__} shard-{getattr(unit, 'shard', '?')}: samples that kill the worker: "
              f"{found}; recorded as invalid (worker_died), the rest commits", file=sys.stderr, flush=True)
        finals.append(dataclasses.replace(unit, skip_keys=tuple(sorted(set(unit.skip_keys) | culprits))))
    final = run_units(finals, worker_cls, worker_args, max_retries=max_retries, on_failure=on_failure, **run_kwargs)
    report.units_done += final.units_done
    report.samples += final.samples
    report.results += final.results
    report.failures += final.failures
    report.wall_s += final.wall_s
    return report


def _find_culprits(unit: Any, keys: list[str], worker_cls: type, worker_args: tuple, run_kwargs: dict) -> set[str]:
    """The keys of ``unit`` that kill a worker on their own, by bisection over probe units.

    Every probe of one level runs in the same pool, in parallel; a probe is not retried by
    Ray (a deterministic killer would only die again), so each dying probe costs two worker
    starts (run_units reruns it alone once to clear its neighbours).
    """
    skip = set(unit.skip_keys)
    frontier = _halves([k for k in keys if k not in skip])
    culprits: set[str] = set()
    while frontier:
        probes = [dataclasses.replace(unit, probe_keys=tuple(part)) for part in frontier]
        rep = run_units(probes, worker_cls, worker_args, max_retries=0, **run_kwargs)
        frontier = []
        for fail in rep.failures:
            if fail["reason"] != WORKER_DIED:
                continue  # an ordinary error: the final run records it per sample
            part = list(fail["unit"].probe_keys)
            if len(part) == 1:
                culprits.add(part[0])
            else:
                frontier += _halves(part)
    return culprits


def _halves(keys: list[str]) -> list[list[str]]:
    if len(keys) <= 1:
        return [keys] if keys else []
    mid = len(keys) // 2
    return [keys[:mid], keys[mid:]]
