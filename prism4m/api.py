"""The Python API; the CLI mirrors it one command per function.

    from prism4m import api
    api.ingest("photos/", "s3://bucket/ds", shard_size=1000)
    api.label("s3://bucket/ds", ["canny_edge", "color_palette", "metadata"])
    print(api.status("s3://bucket/ds"))
"""

from __future__ import annotations

from prism4m.pipeline.execute import WorkerStartupError
from prism4m.pipeline.ingest import IngestConfig, IngestSummary, ingest
from prism4m.pipeline.label import LabelSummary, PlanError, label
from prism4m.report.status import DatasetStatus, dataset_status as status

__all__ = ["ingest", "label", "status", "report", "estimate", "run_job", "IngestConfig", "IngestSummary", "LabelSummary",
           "DatasetStatus", "PlanError", "WorkerStartupError"]


def report(root: str, out_dir: str, **kwargs):
    """Static HTML report of a root (see prism4m.report.html.build_report)."""
    from prism4m.report.html import build_report

    return build_report(root, out_dir, **kwargs)


def estimate(images: int, gpus: int, labelers: list[str] | None = None, root: str | None = None, **kwargs):
    """Projected hours / GPU-hours (see prism4m.report.estimate.estimate)."""
    from prism4m.report.estimate import estimate as _estimate

    return _estimate(images, gpus, labelers, root, **kwargs)


def run_job(path: str, show_progress: bool = True) -> bool:
    """Run the steps of a job spec in order; False when any unit failed (others completed)."""
    from prism4m.jobs import load_job
    from prism4m.report.status import format_status

    spec = load_job(path)
    ok = True
    so = spec.storage_options or None
    if spec.ingest:
        s = ingest(spec.ingest.source, spec.root, spec.ingest.config, workers=spec.ingest.workers,
                   force=spec.ingest.force, ray_address=spec.ray_address, storage_options=so,
                   show_progress=show_progress)
        print(f"ingest: {s.samples_planned} samples planned, {s.duplicates} duplicates, "
              f"input files refused: {dict(s.scan_errors) or '-'}")
        ok &= s.ok
    if spec.label:
        s2 = label(spec.root, spec.label.modalities, spec.label.labelers, workers=spec.label.workers,
                   force=spec.label.force, update_stale=spec.label.update_stale,
                   ray_address=spec.ray_address, storage_options=so, show_progress=show_progress)
        print(f"label: ran {s2.planned or 'nothing'}; up to date {s2.skipped or '-'}")
        ok &= s2.ok
    from prism4m.jobs import run_extra_steps

    ok &= run_extra_steps(spec, show_progress=show_progress)
    print(format_status(status(spec.root, so)))
    return ok
