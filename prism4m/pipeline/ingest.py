"""`prism4m ingest SRC ROOT`: a raw corpus → keyed rgb/, source/, crop_settings/ shards.

Three steps, each restartable:
1. list the source (driver, cheap) and *scan* new files on Ray: read each item's bytes once
   to hash them, so content duplicates are found before any shard is written;
2. plan on the driver (ingest_plan.py): keys, duplicates, shard assignment; the plan is
   saved in `_plan/ingest.parquet` and only ever appended to, so rerunning over a grown
   corpus adds shards at the end and never reshuffles committed ones;
3. ingest shards on Ray actors: decode, orient, convert, resize, re-encode, draw crops,
   commit (tars, error lines, ledger last).
Every input file ends either as a sample or as an error line with a reason code.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from prism4m import __version__
from prism4m.labelers.encoding import encode_json, encode_npy
from prism4m.pipeline.crops import crop_settings
from prism4m.pipeline.execute import run_units
from prism4m.pipeline.images import BadImage, normalize_image
from prism4m.pipeline.ingest_plan import (key_hash, load_plan_shard, make_key, plan_and_save, plan_counts,
                                           release_memory, scan_schema, unplanned_files)
from prism4m.pipeline.progress import Progress
from prism4m.pipeline.sources import SourceFile, UnsafeSource, iter_items, list_source, source_files
from prism4m.pipeline.summary import StageSummary
from prism4m.pipeline.store import DatasetStore, Member, producer_hash

if TYPE_CHECKING:
    import pyarrow as pa

SCAN_ERRORS = "_errors/ingest/scan.jsonl"
INGEST_FOLDERS = ("rgb", "source", "crop_settings")


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_size: int = Field(1000, ge=1, description="samples per shard (ml-4m uses 1,000–10,000)")
    short_side: int = Field(512, ge=32, description="resize so the short side is this (serves 224 and 448 crops)")
    jpeg_quality: int = Field(90, ge=50, le=100)
    n_crops: int = Field(5, ge=1, description="crop_settings rows per sample (row 0: centre square)")
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    min_side: int = Field(32, ge=1, description="smaller images are refused (too_small)")
    max_pixels: int = Field(89_478_485, ge=1, description="larger images are refused (too_large; bomb guard)")
    max_bytes: int = Field(256 * 2**20, ge=1, description="larger files are refused (too_large)")
    dedup: bool = Field(True, description="drop content duplicates (recorded with duplicate_of)")
    scan_batch: int = Field(256, ge=1, description="image files per scan task")

    def output_fields(self) -> dict:
        return self.model_dump(mode="json", exclude={"shard_size", "scan_batch", "max_bytes", "dedup"})


@dataclass
class IngestSummary(StageSummary):
    files_listed: int = 0
    new_items: int = 0
    samples_planned: int = 0
    duplicates: int = 0
    scan_errors: dict[str, int] = field(default_factory=dict)
    skipped_shards: int = 0


# ---------------------------------------------------------------------- scan (Ray)
@dataclass(frozen=True)
class ScanUnit:
    start: int        # row of the first file in the run's new-files table
    files: pa.Table   # those files' rows: a slice of that table, so the driver holds no copy

    def __reduce__(self):
        # A pickled slice carries its parent's whole buffers: ship a copy of just these rows.
        import numpy as np

        return ScanUnit, (self.start, self.files.take(np.arange(self.files.num_rows)))


class ScanWorker:
    """Reads each item once to hash it; container errors are reported, not raised.

    Items come back as Arrow IPC bytes (raw 32-byte digests, the file as a row number): the
    driver holds every scanned item of a run until it has planned them, and held as one bytes
    object per unit they cost it ~1.3x their size, where pickled tables cost ~2.5x (measured).
    """

    def __init__(self, storage_options: dict | None, max_bytes: int):
        self.so = storage_options
        self.max_bytes = max_bytes

    def ready(self) -> bool:
        return True

    def process(self, unit: ScanUnit) -> dict:
        import pyarrow as pa

        rows, errors = [], []
        for i, f in enumerate(source_files(unit.files), start=unit.start):
            try:
                for it in iter_items(f, self.so):
                    key = make_key(it.source_id)
                    rows.append((i, it.source_id, it.member, hashlib.sha256(it.data).digest(), len(it.data),
                                 it.caption, key, key_hash(key)))
            except UnsafeSource as exc:  # absolute/'..' members, links: refused whole
                errors.append({"source": f.uri, "reason": "unsafe", "message": str(exc)})
            except ValueError as exc:  # unreadable tar / Parquet without image column
                errors.append({"source": f.uri, "reason": "undecodable", "message": str(exc)})
            except OSError as exc:
                errors.append({"source": f.uri, "reason": "unreadable", "message": f"{f.uri}: {exc}"})
        schema = scan_schema()
        cols = zip(*rows) if rows else [()] * len(schema)
        items = pa.table([pa.array(list(c), fld.type) for c, fld in zip(cols, schema)], schema=schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(items)
        return {"samples": len(rows), "start": unit.start, "items": sink.getvalue().to_pybytes(), "errors": errors}


def _scan_units(files: pa.Table, batch: int) -> list[ScanUnit]:
    """Contiguous runs of ``files``: up to ``batch`` loose images per unit, a container file alone."""
    import pyarrow.compute as pc

    bounds, start = [], 0
    for i, is_image in enumerate(pc.equal(files["kind"], "image").to_pylist()):
        if not is_image:
            if start < i:
                bounds.append((start, i))
            bounds.append((i, i + 1))
            start = i + 1
        elif i + 1 - start == batch:
            bounds.append((start, i + 1))
            start = i + 1
    if start < files.num_rows:
        bounds.append((start, files.num_rows))
    return [ScanUnit(a, files.slice(a, b - a)) for a, b in bounds]


# ---------------------------------------------------------------------- ingest (Ray)
@dataclass(frozen=True)
class IngestUnit:
    shard: int  # the worker reads this shard's rows from the saved plan (the driver ships no items)


class IngestWorker:
    def __init__(self, store: DatasetStore, config: dict, source_options: dict | None, has_captions: bool):
        self.store = store
        self.cfg = IngestConfig.model_validate(config)
        self.so = source_options
        self.has_captions = has_captions

    def ready(self) -> bool:
        return True

    def process(self, unit: IngestUnit) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        items = load_plan_shard(self.store, unit.shard)
        by_file: dict[str, list[dict]] = defaultdict(list)
        for it in items:
            by_file[it["file_uri"]].append(it)
        raw: dict[str, tuple[bytes, str | None]] = {}
        errors: list[dict] = []
        for file_items in by_file.values():
            first = file_items[0]
            f = SourceFile(first["file_uri"], first["file_rel"], first["kind"], first["caption_uri"])
            want = {it["source_id"] for it in file_items}
            try:
                for r in iter_items(f, self.so, want):
                    raw[r.source_id] = (r.data, r.caption)
            except (ValueError, OSError) as exc:
                for it in file_items:
                    errors.append({"key": it["key"], "source": it["source_id"], "reason": "unreadable",
                                   "message": str(exc)})
        outputs: dict[str, list[Member]] = {f: [] for f in INGEST_FOLDERS}
        if self.has_captions:
            outputs["caption"] = []
        failed_keys = {e["key"] for e in errors}
        for it in items:
            if it["source_id"] not in raw:
                if it["key"] not in failed_keys:
                    errors.append({"key": it["key"], "source": it["source_id"], "reason": "unreadable",
                                   "message": f"{it['source_id']}: item vanished from the source"})
                continue
            data, caption = raw[it["source_id"]]
            try:
                if len(data) > cfg.max_bytes:
                    raise BadImage("too_large", f"{it['source_id']}: {len(data):,} bytes exceeds max_bytes")
                if hashlib.sha256(data).hexdigest() != it["sha256"]:
                    raise BadImage("undecodable", f"{it['source_id']}: content changed since the scan")
                img = normalize_image(data, short_side=cfg.short_side, jpeg_quality=cfg.jpeg_quality,
                                      min_side=cfg.min_side, max_pixels=cfg.max_pixels, name=it["source_id"])
            except BadImage as exc:
                errors.append({"key": it["key"], "source": it["source_id"], "reason": exc.reason,
                               "message": str(exc)})
                continue
            key = it["key"]
            crops = crop_settings(key, img.height, img.width, n_crops=cfg.n_crops, seed=cfg.seed,
                                  scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio), hflip_p=cfg.hflip_p)
            source = {"uri": it["file_uri"], "source_id": it["source_id"], "member": it.get("member"),
                      "original_width": img.original_width, "original_height": img.original_height,
                      "original_mode": img.original_mode, "format": img.format,
                      "exif_orientation": img.exif_orientation, "sha256": it["sha256"],
                      "bytes": it["nbytes"], "width": img.width, "height": img.height,
                      "duplicates": it.get("duplicates", [])}
            outputs["rgb"].append(Member(key, "jpg", img.jpeg))
            outputs["source"].append(Member(key, "json", encode_json(source)))
            outputs["crop_settings"].append(Member(key, "npy", encode_npy(crops)))
            if self.has_captions:
                outputs["caption"].append(Member(key, "txt", (caption or "").encode()))
        producer = ingest_producer(cfg)
        records = {f: {"producer": producer, "inputs": {}, "random_weights": False,
                       "wall_s": round(time.perf_counter() - t0, 4)} for f in outputs}
        if self.has_captions:
            records["caption"]["producer"] = {**producer, "name": "source_caption"}
            records["caption"]["invalid"] = [m.key for m in outputs["caption"] if not m.data]
        self.store.commit_unit(unit.shard, outputs, records, {"rgb": errors})
        return {"samples": len(outputs["rgb"]), "shard": unit.shard, "errors": len(errors)}


def ingest_producer(cfg: IngestConfig) -> dict:
    return {"kind": "ingest", "name": "ingest", "config": cfg.output_fields(), "code_version": __version__}


def _append_scan_errors(store: DatasetStore, lines: list[dict]) -> None:
    if not lines:
        return
    path = store.p(SCAN_ERRORS)
    old = store.read_bytes(path).decode() if store.exists(path) else ""
    seen = {json.loads(x).get("source") for x in old.splitlines() if x.strip()}
    new = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines if x.get("source") not in seen)
    store.write_bytes_atomic(path, (old + new).encode())


def _scanned_items(report, scan_errors: list[dict]) -> pa.Table:
    """The items of a scan run as one table sorted by source_id; its errors into ``scan_errors``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for r in report.results:
        scan_errors.extend(r["errors"])
    for fail in report.failures:
        for uri in fail["unit"].files["uri"].to_pylist():
            scan_errors.append({"source": uri, "reason": "unreadable", "message": fail["message"]})
    # Results come back in completion order: put them in listing order, which for loose images
    # already is source_id order (then no sorted copy of every item is made).
    tables = [scan_schema().empty_table()]
    for r in sorted(report.results, key=lambda r: r["start"]):
        tables.append(pa.ipc.open_stream(r["items"]).read_all())
        r["items"] = tables[-1].num_rows  # the plan takes the items; the report keeps counts
    items = pa.concat_tables(tables)
    del tables
    sid = items["source_id"]
    if len(sid) < 2 or pc.all(pc.less(sid.slice(0, len(sid) - 1), sid.slice(1))).as_py():
        return items
    return items.take(pc.sort_indices(sid))


def ingest(source: str, root: str, config: IngestConfig | dict | None = None, *, workers: int | None = None,
           force: bool = False, ray_address: str | None = None, storage_options: dict | None = None,
           source_options: dict | None = None, show_progress: bool = True, max_retries: int = 2,
           **overrides) -> IngestSummary:
    """Ingest ``source`` into the dataset root ``root``. Keyword overrides set IngestConfig fields."""
    t0 = time.perf_counter()
    if isinstance(config, IngestConfig):
        config = config.model_dump()
    cfg = IngestConfig.model_validate({**(config or {}), **overrides})
    store = DatasetStore(root, storage_options)
    summary = IngestSummary()

    listing, skipped = list_source(source, source_options)
    summary.files_listed = listing.num_rows + len(skipped)
    new_files = unplanned_files(store, listing)
    del listing
    release_memory()
    scan_errors = [{"source": s.uri, "reason": s.reason, "message": s.message} for s in skipped]

    def ray_up() -> int | None:
        if not summary.ray_start_s:
            from prism4m.pipeline.ray_env import ensure_ray

            summary.ray_start_s = ensure_ray(ray_address) or 1e-9
        return workers  # None: run_units sizes the pool from what the cluster fits

    had_new_files = new_files.num_rows > 0
    if had_new_files:
        n_workers = ray_up()
        scan_units = _scan_units(new_files, cfg.scan_batch)
        report = run_units(scan_units, ScanWorker, (source_options, cfg.max_bytes), workers=n_workers,
                           max_retries=max_retries, progress=Progress("scan", len(scan_units), enabled=show_progress))
        summary.reports.append(report)
        del scan_units  # the report keeps those that failed
        scanned = _scanned_items(report, scan_errors)
        summary.new_items = scanned.num_rows
        plan_and_save(store, scanned, new_files, cfg, scan_errors)
        del scanned
    del new_files
    release_memory()
    _append_scan_errors(store, scan_errors)
    for e in scan_errors:
        summary.scan_errors[e["reason"]] = summary.scan_errors.get(e["reason"], 0) + 1
    counts = plan_counts(store)
    summary.duplicates, summary.samples_planned = counts.duplicates, counts.samples

    has_captions = counts.has_captions
    current = producer_hash(ingest_producer(cfg))
    folders = INGEST_FOLDERS + (("caption",) if has_captions else ())
    ledgers = {f: store.ledger(f) for f in folders}
    units = []
    for s in counts.shards:
        done = all(ledgers[f].get(s, {}).get("producer_hash") == current for f in folders if f != "caption") and \
            (not has_captions or s in ledgers["caption"])
        if done and not force:
            summary.skipped_shards += 1
            continue
        units.append(IngestUnit(s))
    if units:
        n_workers = ray_up()
        report = run_units(units, IngestWorker, (store, cfg.model_dump(mode="json"), source_options, has_captions),
                           workers=n_workers, max_retries=max_retries,
                           progress=Progress("ingest", len(units), enabled=show_progress),
                           on_failure=lambda u, reason, msg: [store.record_failure(f, u.shard, reason, msg)
                                                              for f in folders])
        summary.reports.append(report)
    if units or had_new_files or not store.exists(store.p("prism4m.json")):
        from prism4m.pipeline.manifest import update_manifest

        update_manifest(store, ingest={"source": source, "config": cfg.model_dump(mode="json")})
    summary.wall_s = time.perf_counter() - t0
    return summary
