"""The ingest plan: which scanned item becomes which key in which shard, kept in
`_plan/ingest.parquet` (ingest.py runs the stages around it).

The driver plans on Arrow/numpy columns, not per-item Python objects, so its memory stays
flat as the corpus grows (benchmarks/bench_scale.py): content duplicates by hash, unique
keys, shard numbers. The plan is append-only: a rerun over a grown corpus adds rows (and
shards) at the end and never reshuffles committed ones; workers read only their shard's
rows (small row groups + a filter on ``shard``).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from prism4m.contract.store import PLAN_DIR, DatasetStore

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from prism4m.pipeline.ingest_settings import IngestConfig

PLAN_PATH = f"{PLAN_DIR}/ingest.parquet"
PLAN_ROW_GROUP = 2048  # shards grow along the plan's rows: small row groups let a worker read just its own


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


def load_plan_shard(store: DatasetStore, shard: int) -> list[dict]:
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


def plan_counts(store: DatasetStore) -> _PlanCounts:
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


def unplanned_files(store: DatasetStore, listing: pa.Table) -> pa.Table:
    """The listed files the plan does not hold yet (a file is planned whole, once)."""
    import pyarrow.compute as pc

    known = _read_plan(store, ["file_rel"])["file_rel"].unique()
    if len(known) == 0:
        return listing
    return listing.filter(pc.invert(pc.is_in(listing["rel"], value_set=known)))


def release_memory() -> None:
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
            release_memory()
        for i in range(0, new.num_rows, PLAN_ROW_GROUP):  # new rows start a row group, as they start a shard
            writer.write_table(_plan_rows(new.slice(i, PLAN_ROW_GROUP), files))
            release_memory()  # the writer's encoders, a row group's worth each time
    store._move(tmp, store.p(PLAN_PATH))  # the store's atomic move into place


def plan_and_save(store: DatasetStore, scanned: pa.Table, files: pa.Table, cfg: IngestConfig,
                   scan_errors: list[dict]) -> None:
    """Plan newly scanned items after the saved plan and save the grown plan."""
    release_memory()
    new, old_dups = _plan_new_items(_read_plan(store, ["key", "sha256", "shard"]), scanned, cfg, scan_errors)
    release_memory()
    if new.num_rows:
        _write_plan(store, new, files, old_dups)
