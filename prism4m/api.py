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
           "DatasetStatus", "PlanError", "WorkerStartupError", "describe_ingest", "describe_label",
           "describe_tokenize", "describe_tokenizer"]


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
    from prism4m.errors import refuse_file_root
    from prism4m.jobs import load_job
    from prism4m.report.status import format_status

    spec = load_job(path)
    refuse_file_root(spec.root)
    ok = True
    so = spec.storage_options or None
    if spec.ingest:
        s = ingest(spec.ingest.source, spec.root, spec.ingest.config, workers=spec.ingest.workers,
                   force=spec.ingest.force, ray_address=spec.ray_address, storage_options=so,
                   show_progress=show_progress)
        print("\n".join(describe_ingest(s)))
        ok &= s.ok
    if spec.label:
        s2 = label(spec.root, spec.label.modalities, spec.label.labelers, workers=spec.label.workers,
                   force=spec.label.force, update_stale=spec.label.update_stale,
                   ray_address=spec.ray_address, storage_options=so, show_progress=show_progress)
        print("\n".join(describe_label(s2)))
        ok &= s2.ok
    from prism4m.jobs import run_extra_steps

    ok &= run_extra_steps(spec, show_progress=show_progress)
    print(format_status(status(spec.root, so)))
    return ok


# ---------------------------------------------------------------------- run summaries
# One line per stage, the same shape for each (the CLI and `run` print these):
#   <stage>: ran <what> shards; up to date: <what> shards; <n> samples; <t>s
# followed by indented detail lines. Counts per folder read `folder=n, folder=n`.

NOTHING = "0 shards (nothing to do)"


def counts(d: dict) -> str:
    """{name: n} as `a=1, b=2` (sorted), or `-` when empty: never a Python dict repr."""
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def _stage_line(stage: str, ran: str, up_to_date: str, samples: int, wall_s: float, failed: int,
                extra: str = "") -> str:
    failed_part = f"; {failed} failed" if failed else ""
    return (f"{stage}: ran {ran}; up to date: {up_to_date}{extra}; {samples} samples{failed_part}; "
            f"{wall_s:.1f}s")


def _shards(per_folder: dict[str, int] | int, none: str) -> str:
    if not per_folder:
        return none
    return f"{per_folder} shards" if isinstance(per_folder, int) else f"{counts(per_folder)} shards"


def _samples(reports) -> int:
    """Samples in the shards a run wrote: one shard labelled by two actor groups counts once."""
    return sum({r["shard"]: r.get("samples", 0) for rep in reports for r in rep.results if "shard" in r}.values())


def describe_ingest(s: IngestSummary) -> list[str]:
    written = [r for rep in s.reports for r in rep.results if "shard" in r and not r.get("refused")]  # REFUSED below
    done = sum(r.get("samples", 0) for r in written)
    bad = sum(r.get("errors", 0) for r in written)
    refused = sum(v for k, v in s.scan_errors.items() if k != "duplicate")
    lines = [_stage_line("ingest", _shards(len(written), NOTHING), _shards(s.skipped_shards, "-"), done, s.wall_s,
                         len(s.failures)),
             f"  files: {s.files_listed} listed, {s.new_items} new items, {s.samples_planned} samples planned, "
             f"{s.duplicates} duplicates, {refused} refused while listing/scanning, {bad} refused while decoding"]
    if s.scan_errors:
        lines.append(f"  listing/scan: {counts(s.scan_errors)}")
    if s.captions_added:
        lines.append(f"  captions: {s.captions_added} committed shards got an aligned caption shard "
                     "(empty records: their source had no captions)")
    for r in s.refused:
        lines.append(f"  REFUSED {r['message']}")
    return lines


def describe_label(s: LabelSummary) -> list[str]:
    lines = [_stage_line("label", _shards(s.planned, NOTHING), _shards(s.skipped, "-"), _samples(s.reports),
                         s.wall_s, len(s.failures))]
    if s.stale_skipped:
        lines.append(f"  stale (config or inputs changed), not recomputed: {counts(s.stale_skipped)} shards"
                     " — rerun with --update-stale to recompute them")
    if s.retried:
        recovered = sum(r.get("recovered", 0) for rep in s.reports for r in rep.results)
        lines.append(f"  invalid samples rerun: {counts(s.retried)} shards; {recovered} samples now valid")
    for folder, owners in sorted(s.owned_skipped.items()):
        lines.append(f"  {folder}: {counts(owners)} shards written by another producer, kept "
                     "— pass --overwrite-owned to replace them")
    return lines


def describe_tokenize(s) -> list[str]:
    """Lines for a prism4m.tokenizers.TokenizeSummary."""
    stale = f"; stale re-tokenized: {counts(s.stale)} shards" if s.stale else ""
    return [_stage_line("tokenize", _shards(s.planned, NOTHING), _shards(s.skipped, "-"),
                        _samples([s.report] if s.report else []), s.wall_s, len(s.failures), stale)]


def describe_tokenizer(card, out: str) -> list[str]:
    """What `tokenizer train` made: where, what, and its held-out metrics as `name=value`."""
    metrics = getattr(card, "metrics", None) or {}
    held = metrics.get("held_out", metrics)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in held.items() if not isinstance(v, (dict, list)))
    return [f"tokenizer {card.modality}: {out} ({card.type}, vocab {card.vocab_size}); held-out: {shown or '-'}"]

