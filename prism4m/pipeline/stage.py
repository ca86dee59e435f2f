"""What every stage returns: the Ray run reports plus timings; stages add their own counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from prism4m.pipeline.execute import RunReport


@dataclass
class StageSummary:
    reports: list[RunReport] = field(default_factory=list)
    ray_start_s: float = 0.0
    wall_s: float = 0.0

    @property
    def failures(self) -> list[dict]:
        return [f for r in self.reports for f in r.failures]

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.reports)

    @property
    def ok(self) -> bool:
        return not self.failures
