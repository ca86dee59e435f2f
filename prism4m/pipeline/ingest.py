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

from prism4m import __version__
from prism4m.contract.members import encode_json, encode_npy
from prism4m.contract.crop_settings import crop_settings
from prism4m.pipeline.images import VECTORISED_RESIZE_MIN_IMAGES, BadImage, normalize_image
from prism4m.pipeline.ingest_settings import IngestConfig, resolve_settings, save_settings
from prism4m.pipeline.ingest_plan import (key_hash, load_plan_shard, make_key, plan_and_save, plan_counts,
                                           release_memory, scan_schema, unplanned_files)
from prism4m.pipeline.sources import SourceFile, UnsafeSource, iter_items, list_source, source_files
from prism4m.pipeline.stage import StageSummary, finish_stage, run_stage_units
from prism4m.contract.producers import record_producers
from prism4m.contract.store import DatasetStore, Member, absolute_url, producer_hash, shard_name

if TYPE_CHECKING:
    import pyarrow as pa

SCAN_ERRORS = "_errors/ingest/scan.jsonl"
INGEST_FOLDERS = ("rgb", "source", "crop_settings")


@dataclass
class IngestSummary(StageSummary):
    files_listed: int = 0
    new_items: int = 0
    samples_planned: int = 0
    duplicates: int = 0
    scan_errors: dict[str, int] = field(default_factory=dict)
    captions_added: int = 0   # committed shards that got an aligned caption shard (no re-decode)
    refused: list[dict] = field(default_factory=list)  # {"shard", "message"}: committed shard kept

    @property
    def ok(self) -> bool:
        return not self.failures and not self.refused

    @property
    def skipped_shards(self) -> int:
        return self.skipped.get("rgb", 0)


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
    """Reads each item once to hash it; container errors and refused members are reported
    (one error line each, naming the file or member), not raised.

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
                    if it.reason:  # a tar member refused on its own (unsafe, repeated, no image)
                        errors.append({"source": f"{f.uri}#{it.member}", "member": it.member,
                                       "reason": it.reason, "message": it.message})
                        continue
                    key = make_key(it.source_id)
                    rows.append((i, it.source_id, it.member, hashlib.sha256(it.data).digest(), len(it.data),
                                 it.caption, key, key_hash(key)))
            except ValueError as exc:  # unreadable tar / Parquet (SourceError says which reason)
                errors.append({"source": f.uri, "reason": getattr(exc, "reason", "undecodable"), "message": str(exc)})
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
    # "shard": decode and commit every folder; "captions": only give a committed shard its
    # aligned caption shard (keys from its committed source/ shard; nothing is decoded).
    mode: str = "shard"
    skip_keys: tuple[str, ...] = ()    # samples that killed a worker: recorded, never decoded again
    probe_keys: tuple[str, ...] | None = None  # narrowing a worker death: process these, commit nothing


class IngestWorker:
    def __init__(self, store: DatasetStore, config: dict, source_options: dict | None, has_captions: bool):
        self.store = store
        self.cfg = IngestConfig.model_validate(config)
        self.so = source_options
        self.has_captions = has_captions

    def ready(self) -> bool:
        return True

    def _vectorised_resize(self, n_images: int) -> bool:
        """Whether this unit resizes on torch's kernel (images.VECTORISED_RESIZE_MIN_IMAGES)."""
        if self.cfg.resize_filter != "bicubic" or n_images < VECTORISED_RESIZE_MIN_IMAGES:
            return False
        import torch  # noqa: F401 - once per worker, by its first large unit

        from prism4m.pipeline.ray_env import limit_threads_to_assigned_cpus

        limit_threads_to_assigned_cpus()
        return True

    def process(self, unit: IngestUnit) -> dict:
        if unit.mode == "captions":
            return self._add_captions(unit)
        t0 = time.perf_counter()
        cfg = self.cfg
        items = load_plan_shard(self.store, unit.shard)
        uri_of = {it["key"]: it["file_uri"] for it in items}
        skip = set(unit.skip_keys)
        errors: list[dict] = [
            {"key": it["key"], "source": it["source_id"], "reason": "worker_died",
             "message": f"{it['source_id']}: decoding it killed the ingest worker; not retried"}
            for it in items if it["key"] in skip]
        items = [it for it in items if it["key"] not in skip and
                 (unit.probe_keys is None or it["key"] in unit.probe_keys)]
        by_file: dict[str, list[dict]] = defaultdict(list)
        for it in items:
            by_file[it["file_uri"]].append(it)
        raw: dict[str, tuple[bytes, str | None]] = {}
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
        vectorised = self._vectorised_resize(len(uri_of))  # the planned shard, whatever is skipped
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
                                      subsampling=cfg.subsampling, resize_filter=cfg.resize_filter,
                                      vectorised_resize=vectorised,
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
        if unit.probe_keys is not None:
            return {"samples": len(outputs["rgb"]), "shard": unit.shard, "probe": True}
        refusal = self._shrinks_committed(unit.shard, len(outputs["rgb"]), errors, uri_of)
        if refusal:
            return {"samples": 0, "shard": unit.shard, "refused": refusal}
        producer = ingest_producer(cfg)
        records = {f: {"producer": producer, "inputs": {}, "random_weights": False,
                       "wall_s": round(time.perf_counter() - t0, 4)} for f in outputs}
        if self.has_captions:
            records["caption"]["producer"] = caption_producer(cfg)
            records["caption"]["invalid"] = [m.key for m in outputs["caption"] if not m.data]
        self.store.commit_unit(unit.shard, outputs, records, {"rgb": errors})
        return {"samples": len(outputs["rgb"]), "shard": unit.shard, "errors": len(errors)}

    def _shrinks_committed(self, shard: int, n_valid: int, errors: list[dict], uri_of: dict[str, str]) -> str | None:
        """Why this result must not replace the committed shard, if it must not.

        A recompute (``--force``) whose inputs went missing would commit fewer samples than
        the shard holds: the committed shard is kept and the shard is refused, naming the files.
        """
        path = self.store.ledger_path("rgb", shard)
        if not self.store.exists(path):
            return None
        old = self.store.read_json(path)
        old_valid = old["n_samples"] - len(old.get("invalid", []))
        if n_valid >= old_valid:
            return None
        missing = sorted({uri_of[e["key"]] for e in errors if e["reason"] in ("unreadable", "worker_died")})
        if not missing:
            return None  # fewer samples because of the settings (e.g. a larger min_side): the user's choice
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return (f"rgb/{shard_name(shard)}: kept as committed ({old_valid} samples); recomputing it would "
                f"leave {n_valid} because its source is gone or unreadable: {shown}")

    def _add_captions(self, unit: IngestUnit) -> dict:
        """An aligned caption shard for a committed shard, from the plan's captions (no decode)."""
        t0 = time.perf_counter()
        captions = {it["key"]: it.get("caption") for it in load_plan_shard(self.store, unit.shard)}
        keys = [m.key for m in self.store.iter_shard("source", unit.shard)]
        members = [Member(k, "txt", (captions.get(k) or "").encode()) for k in keys]
        record = {"producer": caption_producer(self.cfg), "inputs": {}, "random_weights": False,
                  "invalid": [m.key for m in members if not m.data], "wall_s": round(time.perf_counter() - t0, 4)}
        self.store.commit_unit(unit.shard, {"caption": members}, {"caption": record})
        return {"samples": len(members), "shard": unit.shard, "errors": 0, "captions_only": True}


def ingest_producer(cfg: IngestConfig) -> dict:
    return {"kind": "ingest", "name": "ingest", "config": cfg.output_fields(), "code_version": __version__}


def caption_producer(cfg: IngestConfig) -> dict:
    """The corpus's own captions: ingest owns the caption folder they are written to."""
    return {**ingest_producer(cfg), "name": "source_caption"}


def _append_scan_errors(store: DatasetStore, lines: list[dict]) -> None:
    if not lines:
        return
    path = store.p(SCAN_ERRORS)
    old = store.read_bytes(path).decode() if store.exists(path) else ""
    seen = {json.loads(x).get("source") for x in old.splitlines() if x.strip()}
    new = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines if x.get("source") not in seen)
    store.write_bytes_atomic(path, (old + new).encode())


# A scan on Ray costs each of its actors a worker start (~0.5 s, and their resources are handed
# back before the ingest actors can be placed): for a few thousand local loose images the driver
# reads and hashes them in less (~1 GB/s with threads: hashing and reading release the GIL),
# while Ray starts. Tar and Parquet files are always scanned on Ray (one is read whole).
DRIVER_SCAN_MAX_FILES = 4096
DRIVER_SCAN_THREADS = 4


def _scan_here(source: str, new_files: pa.Table) -> bool:
    """Whether the driver scans ``new_files`` itself: a few local loose images."""
    import pyarrow.compute as pc
    from fsspec.utils import get_protocol

    return (0 < new_files.num_rows <= DRIVER_SCAN_MAX_FILES and get_protocol(source) in ("file", "local")
            and pc.all(pc.equal(new_files["kind"], "image")).as_py() is True)


def _scan_in_driver(summary: IngestSummary, units: list[ScanUnit], worker: ScanWorker,
                    ray_address: str | None):
    """The scan units run on driver threads while Ray starts (the ingest needs it next).

    The same ScanWorker code and results as on Ray; a unit that raises is a failure of the
    report, as a unit whose Ray task raised would be (its files then become scan errors)."""
    from concurrent.futures import ThreadPoolExecutor

    from prism4m.pipeline.execute import RunReport
    from prism4m.pipeline.ray_env import ensure_ray

    t0 = time.perf_counter()
    report = RunReport(units_total=len(units))
    with ThreadPoolExecutor(min(DRIVER_SCAN_THREADS, len(units))) as pool:
        futures = [pool.submit(worker.process, u) for u in units]
        summary.ray_start_s += ensure_ray(ray_address)
        for unit, fut in zip(units, futures):
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a unit's failure must not stop the others
                report.failures.append({"unit": unit, "reason": type(exc).__name__, "message": str(exc)[-2000:]})
                continue
            report.units_done += 1
            report.samples += result["samples"]
            report.results.append(result)
    report.wall_s = time.perf_counter() - t0
    summary.reports.append(report)
    return report


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
    """Ingest ``source`` into the dataset root ``root``. Keyword overrides set IngestConfig fields.

    Settings not given (None) are the root's own (ingest_settings.py); a given setting that
    differs from the root's is refused unless ``force`` re-ingests every shard with it.
    """
    if isinstance(config, IngestConfig):
        config = config.model_dump(exclude_unset=True)
    store = DatasetStore(root, storage_options)
    source = absolute_url(source)
    cfg = resolve_settings(store, {**(config or {}), **overrides}, force=force)
    summary = IngestSummary()
    on_ray = dict(ray_address=ray_address, workers=workers, max_retries=max_retries, show_progress=show_progress,
                  shared=[(source, "source")])  # workers read the source too

    listing, skipped = list_source(source, source_options)
    summary.files_listed = listing.num_rows + len(skipped)
    new_files = unplanned_files(store, listing)
    del listing
    release_memory()
    scan_errors = [{"source": s.uri, "reason": s.reason, "message": s.message} for s in skipped]

    had_new_files = new_files.num_rows > 0
    if had_new_files:
        scan_units = _scan_units(new_files, cfg.scan_batch)
        if _scan_here(source, new_files):
            report = _scan_in_driver(summary, scan_units, ScanWorker(source_options, cfg.max_bytes), ray_address)
        else:
            report = run_stage_units(store, summary, scan_units, ScanWorker, (source_options, cfg.max_bytes),
                                     desc="scan", writes=lambda u: (), **on_ray)
        del scan_units  # the report keeps those that failed
        scanned = _scanned_items(report, scan_errors)
        summary.new_items = scanned.num_rows
        plan_and_save(store, scanned, new_files, cfg, scan_errors)
        del scanned
    del new_files
    release_memory()
    save_settings(store, cfg)
    record_producers(store, {f: (ingest_producer(cfg), []) for f in INGEST_FOLDERS})
    _append_scan_errors(store, scan_errors)
    for e in scan_errors:
        summary.count(summary.scan_errors, e["reason"])
    counts = plan_counts(store)
    summary.duplicates, summary.samples_planned = counts.duplicates, counts.samples

    units = _plan_units(store, cfg, counts.shards, counts.has_captions, force, summary)
    if units:
        folders = INGEST_FOLDERS + (("caption",) if counts.has_captions else ())
        report = run_stage_units(
            store, summary, units, IngestWorker, (store, cfg.model_dump(mode="json"), source_options,
                                                  counts.has_captions),
            desc="ingest", writes=lambda u: ("caption",) if u.mode == "captions" else folders,
            keys_of=lambda u: [it["key"] for it in load_plan_shard(store, u.shard)], **on_ray)
        summary.refused = [{"shard": r["shard"], "message": r["refused"]} for r in report.results if r.get("refused")]
        summary.captions_added = sum(1 for r in report.results if r.get("captions_only"))
    finish_stage(store, summary, changed=bool(units or had_new_files),
                 ingest={"sources": _sources_seen(store, source), "config": cfg.model_dump(mode="json")})
    return summary


def _plan_units(store: DatasetStore, cfg: IngestConfig, shards: list[int], has_captions: bool, force: bool,
                summary: IngestSummary) -> list[IngestUnit]:
    """Shards to (re)ingest, and committed shards that only lack their aligned caption shard.

    A shard whose rgb/source/crop_settings were made with this run's settings is done; a
    root that gains captions (a captioned source appended) gives its committed shards a
    caption shard from the plan, re-decoding nothing.
    """
    current = producer_hash(ingest_producer(cfg))
    ledgers = {f: store.ledger(f) for f in (*INGEST_FOLDERS, "caption")}
    units = []
    for s in shards:
        done = all(ledgers[f].get(s, {}).get("producer_hash") == current for f in INGEST_FOLDERS)
        if done and not force:
            summary.count(summary.skipped, "rgb")
            if has_captions and s not in ledgers["caption"]:
                units.append(IngestUnit(s, mode="captions"))
            continue
        units.append(IngestUnit(s))
    return units


def _sources_seen(store: DatasetStore, source: str) -> list[str]:
    """Every source ingested into this root, oldest first (the manifest's record of them)."""
    ingest_section = store.read_manifest().get("ingest", {})
    seen = list(ingest_section.get("sources", []))
    if ingest_section.get("source") and ingest_section["source"] not in seen:
        seen.append(ingest_section["source"])  # manifests written before roots kept a list
    return seen + ([source] if source not in seen else [])
