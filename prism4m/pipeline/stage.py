"""What every stage shares: its summary, and running its units on Ray around `run_units`.

A stage (ingest, label, tokenize) opens the store, plans units from the ledger, then calls
:func:`run_stage_units` for each group of units (Ray started on first use, a failed unit
recorded under `_errors/<folder>/_failed/` for each folder it writes, a unit that kills its
worker narrowed to the sample) and :func:`finish_stage` (manifest repaired when the run
changed the root or it lags the ledger; wall time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from prism4m.contract.manifest import ensure_manifest
from prism4m.contract.store import DatasetStore
from prism4m.pipeline.execute import RunReport
from prism4m.pipeline.progress import Progress


@dataclass
class StageSummary:
    planned: dict[str, int] = field(default_factory=dict)        # folder → shards run
    skipped: dict[str, int] = field(default_factory=dict)        # folder → committed, up to date
    stale_skipped: dict[str, int] = field(default_factory=dict)  # folder → stale, left as they are
    reports: list[RunReport] = field(default_factory=list)
    ray_start_s: float = 0.0
    wall_s: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def failures(self) -> list[dict]:
        return [f for r in self.reports for f in r.failures]

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.reports)

    @property
    def results(self) -> list[dict]:
        return [r for rep in self.reports for r in rep.results]

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, table: dict[str, int], folder: str, n: int = 1) -> None:
        table[folder] = table.get(folder, 0) + n


def run_stage_units(store: DatasetStore, summary: StageSummary, units: Sequence[Any], worker_cls: type,
                    worker_args: tuple, *, desc: str, writes: Callable[[Any], Iterable[str]],
                    ray_address: str | None, workers: int | None, max_retries: int, show_progress: bool,
                    keys_of: Callable[[Any], list[str]] | None = None,
                    shared: Iterable[tuple[str, str]] = (), **resources) -> RunReport:
    """Run ``units`` of one actor group; ``writes(unit)`` names the folders a unit commits;
    ``shared``: other (url, what) the workers read, which every node must see too."""
    from prism4m.pipeline.ray_env import ensure_ray, require_shared

    summary.ray_start_s += ensure_ray(ray_address)
    for url, what in ((store.url, "root"), *shared):  # on a multi-node cluster every worker must see them
        require_shared(url, what)

    def on_failure(unit: Any, reason: str, message: str) -> None:
        for folder in writes(unit):
            store.record_failure(folder, unit.shard, reason, message)

    progress = Progress(desc, len(units), enabled=show_progress)
    if keys_of is None:
        from prism4m.pipeline.execute import run_units

        report = run_units(units, worker_cls, worker_args, workers=workers, max_retries=max_retries,
                           on_failure=on_failure, progress=progress, name=desc, **resources)
    else:
        from prism4m.pipeline.narrow import run_narrowing_deaths

        report = run_narrowing_deaths(units, worker_cls, worker_args, keys_of=keys_of, workers=workers,
                                      max_retries=max_retries, on_failure=on_failure, progress=progress,
                                      describe=desc, **resources)
    summary.reports.append(report)
    return report


def finish_stage(store: DatasetStore, summary: StageSummary, *, changed: bool, **manifest_sections) -> None:
    """Repair the manifest (rewritten when this run changed the root or it lags the ledger)."""
    ensure_manifest(store, force=changed, **manifest_sections)
    summary.wall_s = time.perf_counter() - summary.started
