"""`prism4m ingest SRC ROOT`: a raw corpus → keyed rgb/, source/, crop_settings/ shards.

Three steps, each restartable:
1. list the source (driver, cheap) and *scan* new files on Ray: read each item's bytes once
   to hash them, so content duplicates are found before any shard is written;
2. plan on the driver: keys, duplicates, shard assignment; the plan is saved in
   `_plan/ingest.parquet` and only ever appended to, so rerunning over a grown corpus adds
   shards at the end and never reshuffles committed ones;
3. ingest shards on Ray actors: decode, orient, convert, resize, re-encode, draw crops,
   commit (tars, error lines, ledger last).
Every input file ends either as a sample or as an error line with a reason code.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, ConfigDict, Field

from prism4m import __version__
from prism4m.labelers.encoding import encode_json, encode_npy
from prism4m.pipeline.crops import crop_settings
from prism4m.pipeline.execute import run_units
from prism4m.pipeline.images import BadImage, normalize_image
from prism4m.pipeline.progress import Progress
from prism4m.pipeline.sources import SourceFile, UnsafeSource, iter_items, list_source, source_files
from prism4m.pipeline.summary import StageSummary
from prism4m.pipeline.store import DatasetStore, Member, producer_hash

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

PLAN_PATH = "_plan/ingest.parquet"
PLAN_ROW_GROUP = 2048  # shards grow along the plan's rows: small row groups let a worker read just its own
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


def plan_schema() -> pa.Schema:
    """The columns of `_plan/ingest.parquet`, one row per scanned item (samples and duplicates)."""
    import pyarrow as pa

    text = pa.string()
    return pa.schema([
        ("source_id", text), ("file_uri", text), ("file_rel", text), ("kind", text), ("caption_uri", text),
        ("sha256", text), ("nbytes", pa.int64()), ("key", text),
        ("shard", pa.int64()),                  # -1: not a sample (duplicate)
        ("duplicate_of", text), ("caption", text), ("member", text),
        ("duplicates", pa.list_(text)),         # source ids with the same bytes
    ])


def scan_schema() -> pa.Schema:
    """What a scan task returns per item: ``file`` is the row of the run's new-files table;
    the key and its 64-bit hash are made there too, so the driver makes no string per item."""
    import pyarrow as pa

    return pa.schema([("file", pa.int32()), ("source_id", pa.string()), ("member", pa.string()),
                      ("sha256", pa.binary(32)), ("nbytes", pa.int64()), ("caption", pa.string()),
                      ("key", pa.string()), ("key_hash", pa.int64())])


@dataclass
class IngestSummary(StageSummary):
    files_listed: int = 0
    new_items: int = 0
    samples_planned: int = 0
    duplicates: int = 0
    scan_errors: dict[str, int] = field(default_factory=dict)
    skipped_shards: int = 0


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(source_id: str) -> str:
    """Stable, unique, dot-free key: a readable slug of the name plus a hash of the full id."""
    stem = source_id.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    slug = _SLUG.sub("_", stem).strip("_")[:40] or "item"
    return f"{slug}-{hashlib.sha1(source_id.encode()).hexdigest()[:12]}"


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a key: distinct hashes prove keys distinct, 8 bytes a key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


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
        items = _load_plan_shard(self.store, unit.shard)
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


# ---------------------------------------------------------------------- plan (driver)
# The plan is held and written as Arrow columns, never as a Python object per item: the
# driver's memory must not grow with the corpus (a few bytes per item in a column is fine).
def _iter_plan(store: DatasetStore, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The saved plan a row group or so at a time, typed as `plan_schema` (plans written by
    earlier versions may hold all-null columns of type null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store.p(PLAN_PATH)
    if not store.exists(path):
        return
    schema = plan_schema()
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    with store.fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        if pf.metadata.num_rows == 0:  # an empty plan may have no columns at all
            return
        for batch in pf.iter_batches(batch_size=PLAN_ROW_GROUP, columns=columns):
            yield pa.Table.from_batches([batch]).cast(schema)


def _read_plan(store: DatasetStore, columns: list[str]) -> pa.Table:
    """These columns of the saved plan (no rows when there is none yet)."""
    import pyarrow as pa

    schema = pa.schema([plan_schema().field(c) for c in columns])
    return pa.concat_tables([schema.empty_table(), *_iter_plan(store, columns)])


def _load_plan_shard(store: DatasetStore, shard: int) -> list[dict]:
    """The plan rows of one shard, in sample order (row-group statistics skip the rest)."""
    import pyarrow.parquet as pq

    with store.fs.open(store.p(PLAN_PATH), "rb") as fh:
        return pq.read_table(fh, filters=[("shard", "==", shard)]).to_pylist()


@dataclass
class _PlanCounts:
    samples: int = 0
    duplicates: int = 0
    shards: list[int] = field(default_factory=list)
    has_captions: bool = False


def _plan_counts(store: DatasetStore) -> _PlanCounts:
    """Samples, duplicates, shards and whether any item has a caption, a row group at a time."""
    import numpy as np
    import pyarrow.compute as pc

    out, shards = _PlanCounts(), set()
    for t in _iter_plan(store, ["shard", "caption"]):
        shard = t["shard"].to_numpy()
        out.samples += int((shard >= 0).sum())
        out.duplicates += int((shard < 0).sum())
        shards.update(np.unique(shard[shard >= 0]).tolist())
        out.has_captions = out.has_captions or pc.any(pc.greater(pc.utf8_length(t["caption"]), 0)).as_py() is True
    out.shards = sorted(shards)
    return out


def _unplanned(store: DatasetStore, listing: pa.Table) -> pa.Table:
    """The listed files the plan does not hold yet (a file is planned whole, once)."""
    import pyarrow.compute as pc

    known = _read_plan(store, ["file_rel"])["file_rel"].unique()
    if len(known) == 0:
        return listing
    return listing.filter(pc.invert(pc.is_in(listing["rel"], value_set=known)))


def _release_memory() -> None:
    """Give the pages the driver's allocators kept after a planning step back to the OS.

    Arrow's pool (mimalloc) and glibc's malloc (Ray's result buffers, Python's large objects,
    numpy) keep freed pages for reuse; with the plan's pattern (a few columns of a few MB that
    live for one step) they kept most of them, and the driver's RSS grew with the corpus
    although its live data did not. A few calls per run: cheap next to the steps.
    """
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc only; elsewhere the allocator keeps its pages
    except (AttributeError, OSError):
        pass


def _digest_words(column: pa.ChunkedArray) -> np.ndarray:
    """The scan's 32-byte digests as rows of four uint64 words (a view of each chunk, copied once)."""
    import numpy as np

    parts = [np.frombuffer(c.buffers()[1], np.uint64, count=4 * len(c), offset=c.offset * 32).reshape(-1, 4)
             for c in column.chunks if len(c)]
    return np.concatenate([np.empty((0, 4), np.uint64), *parts])


def _plan_digest_words(column: pa.ChunkedArray) -> np.ndarray:
    """The plan's hex sha256 strings as rows of four uint64 words (a chunk at a time)."""
    import numpy as np

    parts = [np.frombuffer(bytes.fromhex("".join(c.to_pylist())), np.uint64).reshape(-1, 4) for c in column.chunks]
    return np.concatenate([np.empty((0, 4), np.uint64), *parts])


def _first_equal(values: np.ndarray) -> np.ndarray:
    """For each value, the position of the first equal one."""
    import numpy as np

    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def _new_keys(new: pa.Table, taken: pa.ChunkedArray) -> pa.ChunkedArray:
    """The keys of the new items (the scan made them); a key already taken is re-derived until unique."""
    import numpy as np
    import pyarrow as pa

    old_hashes = [np.fromiter(map(key_hash, c.to_pylist()), np.int64) for c in taken.chunks]
    hashes = np.concatenate([np.empty(0, np.int64), *old_hashes, new["key_hash"].to_numpy()])
    if np.unique(hashes).size == hashes.size:
        return new["key"]
    # A clash (astronomically rare): one key at a time, in order, against all taken so far.
    seen, out = set(taken.to_pylist()), []
    for sid in new["source_id"].to_pylist():
        key = make_key(sid)
        while key in seen:
            key = make_key(sid + "#" + key)
        seen.add(key)
        out.append(key)
    return pa.chunked_array([pa.array(out, pa.string())])


def _originals(old: pa.Table, new: pa.Table) -> np.ndarray:
    """For each new item, the row of old ++ new whose bytes it duplicates (-1: none).

    The original is a saved sample with the same bytes (the last of equal ones) or else the
    first new item with them; empty items are no one's duplicate.
    """
    import numpy as np

    orig = np.full(new.num_rows, -1, np.int64)
    elig = np.flatnonzero(new["nbytes"].to_numpy() > 0)
    old_samples = np.flatnonzero(old["shard"].to_numpy() >= 0)[::-1]  # last of equals first
    m = len(old_samples)
    words = np.concatenate([_plan_digest_words(old["sha256"])[old_samples], _digest_words(new["sha256"])[elig]])
    # Group by the first word (8 bytes an item, where whole digests sort 32); a group whose
    # digests are not all equal (2^-64 per pair) is grouped again by the whole digest.
    first = _first_equal(words[:, 0])
    dup = np.flatnonzero(first != np.arange(len(first)))
    if not (words[first[dup]] == words[dup]).all():
        first = _first_equal(np.ascontiguousarray(words).view("S32").reshape(-1))
    first = first[m:]
    saved = first < m
    orig[elig[saved]] = old_samples[first[saved]]
    later = ~saved & (first != np.arange(m, m + len(elig)))
    orig[elig[later]] = old.num_rows + elig[first[later] - m]
    return orig


def _plan_new_items(old: pa.Table, new: pa.Table, cfg: IngestConfig,
                    scan_errors: list[dict]) -> tuple[pa.Table, dict[int, list[str]]]:
    """Keys, duplicates and shards for newly scanned items, appended after the existing plan.

    ``old`` holds the saved plan's key, sha256 and shard columns, ``new`` the scanned items in
    source_id order. Returns the new rows (the scan's columns plus key, shard, duplicate_of and
    duplicates) and the source ids to add to the `duplicates` of saved rows (by row number).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n, n_old = new.num_rows, old.num_rows
    keys = _new_keys(new, old["key"])
    orig = _originals(old, new) if cfg.dedup else np.full(n, -1, np.int64)
    sample = orig < 0
    # New items always start a new shard: committed shards are never reopened.
    last = pc.max(old["shard"]).as_py()
    shard = np.where(sample, (-1 if last is None else last) + 1 + (np.cumsum(sample) - 1) // cfg.shard_size, -1)
    dup_of: list[str | None] = [None] * n
    new_dups: dict[int, list[str]] = defaultdict(list)
    old_dups: dict[int, list[str]] = defaultdict(list)
    for r in np.flatnonzero(~sample).tolist():  # a Python record per duplicate only
        o = int(orig[r])
        sid, key = new["source_id"][r].as_py(), keys[r].as_py()
        dup_of[r] = dup = (old["key"][o] if o < n_old else keys[o - n_old]).as_py()
        (old_dups[o] if o < n_old else new_dups[o - n_old]).append(sid)
        scan_errors.append({"source": sid, "reason": "duplicate", "key": key,
                            "duplicate_of": dup, "message": f"{sid}: same bytes as sample {dup}"})
    counts = np.zeros(n, np.int32)
    for r, sids in new_dups.items():
        counts[r] = len(sids)
    duplicates = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)),
        pa.array([s for r in sorted(new_dups) for s in new_dups[r]], pa.string()))
    new = new.set_column(new.schema.get_field_index("key"), "key", keys)
    new = new.append_column("shard", pa.array(shard, pa.int64()))
    new = new.append_column("duplicate_of", pa.array(dup_of, pa.string()))
    return new.append_column("duplicates", duplicates), dict(old_dups)


def _plan_rows(new: pa.Table, files: pa.Table) -> pa.Table:
    """Planned new items as plan rows: the file's listing fields, hex digests."""
    import pyarrow as pa

    f = files.take(new["file"])
    cols = {"file_uri": f["uri"], "file_rel": f["rel"], "kind": f["kind"], "caption_uri": f["caption_uri"],
            "sha256": pa.array([d.hex() for d in new["sha256"].to_pylist()], pa.string())}
    schema = plan_schema()
    return pa.table([cols[c] if c in cols else new[c] for c in schema.names], schema=schema)


def _with_duplicates(rows: pa.Table, first_row: int, extra: dict[int, list[str]]) -> pa.Table:
    """Saved plan rows with new duplicates appended to their originals' lists."""
    import pyarrow as pa

    hits = [r for r in extra if first_row <= r < first_row + rows.num_rows]
    if not hits:
        return rows
    lists = rows["duplicates"].to_pylist()
    for r in hits:
        lists[r - first_row] = (lists[r - first_row] or []) + extra[r]
    i = rows.schema.get_field_index("duplicates")
    return rows.set_column(i, rows.schema.field(i), pa.array(lists, pa.list_(pa.string())))


def _write_plan(store: DatasetStore, new: pa.Table, files: pa.Table, old_dups: dict[int, list[str]]) -> None:
    """The saved rows (originals noting their new duplicates), then the new ones.

    Streamed into a temporary file, a row group at a time, and moved into place.
    """
    import pyarrow.parquet as pq

    files = files.combine_chunks()  # one chunk (no copy when it is one): a take on chunks copies them all
    tmp = store.tmp_path()
    # Dictionaries only where values repeat: one per id, uri, digest or key column saved nothing
    # and doubled the writer's memory.
    with store.fs.open(tmp, "wb") as out, \
            pq.ParquetWriter(out, plan_schema(), use_dictionary=["kind", "shard"]) as writer:
        first_row = 0
        for rows in _iter_plan(store):
            writer.write_table(_with_duplicates(rows, first_row, old_dups))
            first_row += rows.num_rows
            _release_memory()
        for i in range(0, new.num_rows, PLAN_ROW_GROUP):  # new rows start a row group, as they start a shard
            writer.write_table(_plan_rows(new.slice(i, PLAN_ROW_GROUP), files))
            _release_memory()  # the writer's encoders, a row group's worth each time
    store._move(tmp, store.p(PLAN_PATH))  # the store's atomic move into place


def _plan_and_save(store: DatasetStore, scanned: pa.Table, files: pa.Table, cfg: IngestConfig,
                   scan_errors: list[dict]) -> None:
    """Plan newly scanned items after the saved plan and save the grown plan."""
    _release_memory()
    new, old_dups = _plan_new_items(_read_plan(store, ["key", "sha256", "shard"]), scanned, cfg, scan_errors)
    _release_memory()
    if new.num_rows:
        _write_plan(store, new, files, old_dups)


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
    new_files = _unplanned(store, listing)
    del listing
    _release_memory()
    scan_errors = [{"source": s.uri, "reason": s.reason, "message": s.message} for s in skipped]

    def ray_up() -> int:
        if not summary.ray_start_s:
            from prism4m.pipeline.ray_env import ensure_ray

            summary.ray_start_s = ensure_ray(ray_address) or 1e-9
        from prism4m.pipeline.ray_env import cluster_cpus

        return workers or max(1, int(cluster_cpus()))

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
        _plan_and_save(store, scanned, new_files, cfg, scan_errors)
        del scanned
    del new_files
    _release_memory()
    _append_scan_errors(store, scan_errors)
    for e in scan_errors:
        summary.scan_errors[e["reason"]] = summary.scan_errors.get(e["reason"], 0) + 1
    counts = _plan_counts(store)
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
