"""What each command prints, as lines: the CLI echoes them and the job runner prints the same.

Every stage ends with one line of one shape, then indented details:

    <stage>: ran <what> shards; up to date: <what> shards; <n> samples[; <n> failed]; <t>s

Counts per folder read `folder=n, folder=n` (never a Python dict repr).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the summaries' types; importing them would pull in the stages
    from pathlib import Path

    from prism4m.pipeline.ingest import IngestSummary
    from prism4m.pipeline.label import LabelSummary
    from prism4m.report.estimate import Estimate
    from prism4m.report.status import DatasetStatus

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
    """Lines for the tokenize stage's TokenizeSummary."""
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


def describe_failures(stage: str, failures: list[dict]) -> list[str]:
    """One `FAILED <stage> <unit>: reason: message` line per failed unit (the CLI's stderr)."""
    lines = []
    for f in failures:
        unit = f["unit"]
        where = f"shard-{unit.shard:06d}" if hasattr(unit, "shard") else str(unit)[:80]
        lines.append(f"  FAILED {stage} {where}: {f['reason']}: {f['message'][:300]}")
    return lines


def describe_status(st: DatasetStatus, as_json: bool = False) -> list[str]:
    """The status table, or the documented JSON shape (DatasetStatus.to_json) for scripts."""
    if as_json:
        return [json.dumps(st.to_json(), indent=2)]
    from prism4m.report.status import format_status

    return format_status(st).split("\n")


def describe_report(index: Path) -> list[str]:
    return [f"report: {index}"]


def describe_estimate(est: Estimate) -> list[str]:
    from prism4m.report.estimate import format_estimate

    return format_estimate(est).split("\n")


def describe_export(result: dict[str, Any]) -> list[str]:
    if result.get("format", "").startswith("ml4m-sam"):
        return [f"export: {result['rows']} samples of {result['source_folder']} ({result['invalid']} invalid) in "
                f"{len(result['parts'])} ml-4m {result['folder']} shards at {result['out']}"]
    return [f"export: {result['rows']} rows in {len(result['parts'])} parts; columns: {', '.join(result['columns'])}"]


def describe_tokens_versions(versions: Any) -> list[str]:
    return [json.dumps(versions, indent=2, default=str)]


def describe_tokens_select(folder: str, card_hash: str, swapped: int) -> list[str]:
    return [f"selected {folder} {card_hash}: {swapped} shards"]


def describe_labelers(rows: list[tuple[str, ...]], config: str | None = None) -> list[str]:
    """An aligned table: the labelers (name, where from), or with ``config`` NAME's settings
    (key, type, default, description) and how to set them."""
    if config is not None:
        rows = [("key", "type", "default", "description"), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]
    if config is not None:
        lines.append(f"set with: prism4m label ROOT -m {config} -c {config}.KEY=VALUE")
    return lines
