"""Which shards a run reads, and their members zipped by key across folders.

Sources (``discover_shards``):

- prism4m roots: a shard is read only when every chosen folder has its ledger record
  (``DatasetStore.ledger``; docs/DATASET.md);
- ml-4m-layout roots (no ``_ledger/``): every ``<folder>/shard-*.tar`` present in all folders;
- the Parquet export ``ROOT/_export/parquet/part-%06d.parquet`` (one part per shard).

Tars are streamed by a small ustar/pax/GNU parser (the stdlib tarfile spent half the
loader's time parsing headers) that applies the store's rules: member names through
``split_member_name``, regular files only, gzip detected by its magic, the store's bounds
on a member and on a decompressed shard.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import fsspec

from prism4m.contract.members import decode_npy_view
from prism4m.contract.store import (
    GZIP_MAGIC,
    LEDGER_DIR,
    MAX_MEMBER_BYTES,
    MAX_SHARD_BYTES,
    DatasetStore,
    UnsafeTarMember,
    split_member_name,
)
from prism4m.errors import UserError
from prism4m.pipeline.export import EXPORT_DIR, EXPORT_SUMMARY, EXT_METADATA_KEY

_ML4M_SHARD_RE = re.compile(r"shard-(\d+)\.tar$")  # ml-4m roots keep their own zero padding
_PART_RE = re.compile(r"part-(\d+)\.parquet$")


@dataclass
class ShardSource:
    """One shard index and where each folder's data for it lives."""

    index: int
    urls: dict[str, str]  # folder -> tar URL (or the parquet part URL for every folder)
    invalid: dict[str, set[str]] = field(default_factory=dict)  # folder -> keys listed invalid
    n_samples: int | None = None
    kind: str = "tar"  # "tar" | "parquet"
    random_weights: set[str] = field(default_factory=set)  # folders whose record says random_weights


# -- discovering shards ---------------------------------------------------------------------
def _parquet_dir(fs, path: str) -> str:
    """Where a Parquet export's parts are: ``path`` itself when it is an export directory
    (its ``_export.json``, or a name ending in "parquet"), else ``path/_export/parquet``."""
    if fs.exists(posixpath.join(path, EXPORT_SUMMARY)) or path.rstrip("/").endswith("parquet"):
        return path
    return posixpath.join(path, EXPORT_DIR)


def detect_layout(root: str) -> str:
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(posixpath.join(path, LEDGER_DIR)):
        return "prism4m"
    if fs.exists(posixpath.join(path, EXPORT_SUMMARY)) or fs.exists(posixpath.join(path, EXPORT_DIR)) \
            or path.rstrip("/").endswith("parquet"):
        return "parquet"
    return "ml4m"


def _listed_indices(fs, directory: str, pattern: re.Pattern) -> dict[int, str]:
    if not fs.exists(directory):
        return {}
    found = {}
    for entry in fs.ls(directory, detail=False):
        m = pattern.search(posixpath.basename(entry))
        if m:
            found[int(m.group(1))] = entry
    return found


def discover_shards(root: str, folders: Sequence[str], layout: str = "auto") -> list[ShardSource]:
    """The shards every chosen folder has, in index order (see module docstring)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "parquet":
        return _parquet_sources(root, folders)
    if layout == "prism4m":
        return _ledger_sources(root, folders)
    if layout == "ml4m":
        return _ml4m_sources(root, folders)
    raise ValueError(f"unknown layout {layout!r}; expected auto, prism4m, ml4m or parquet")


def _common(root: str, per_folder: dict[str, dict[int, Any]]) -> list[int]:
    common = set.intersection(*(set(v) for v in per_folder.values())) if per_folder else set()
    if not common:
        counts = {f: len(v) for f, v in per_folder.items()}
        raise UserError(f"no shard is committed in every folder of {root} (committed shards per folder: {counts})")
    return sorted(common)


def _ledger_sources(root: str, folders: Sequence[str]) -> list[ShardSource]:
    store = DatasetStore(root)
    ledgers = {folder: store.ledger(folder) for folder in folders}
    sources = []
    for index in _common(root, ledgers):
        source = ShardSource(index, {f: store.fs.unstrip_protocol(store.shard_path(f, index)) for f in folders})
        for folder in folders:
            record = ledgers[folder][index]
            source.invalid[folder] = set(record.get("invalid") or [])
            if record.get("random_weights"):
                source.random_weights.add(folder)
            if record.get("n_samples") is not None:
                source.n_samples = int(record["n_samples"])
        sources.append(source)
    return sources


def _ml4m_sources(root: str, folders: Sequence[str]) -> list[ShardSource]:
    fs, path = fsspec.core.url_to_fs(root)
    per_folder = {folder: _listed_indices(fs, posixpath.join(path, folder), _ML4M_SHARD_RE) for folder in folders}
    return [ShardSource(i, {f: fs.unstrip_protocol(per_folder[f][i]) for f in folders}) for i in _common(root, per_folder)]


def _parquet_sources(root: str, folders: Sequence[str]) -> list[ShardSource]:
    fs, path = fsspec.core.url_to_fs(root)
    directory = _parquet_dir(fs, path)
    parts = _listed_indices(fs, directory, _PART_RE)
    if not parts:
        raise UserError(f"{root}: no part-*.parquet files under {directory} (`prism4m export ROOT` writes them)")
    flagged = _export_random_weights(fs, directory, folders)
    return [ShardSource(i, {f: fs.unstrip_protocol(p) for f in folders}, kind="parquet",
                        random_weights=set(flagged.get(i, ()))) for i, p in sorted(parts.items())]


def _export_random_weights(fs, directory: str, folders: Sequence[str]) -> dict[int, list[str]]:
    """Part index → chosen folders the export's ``_export.json`` lists as random-weight."""
    summary_path = posixpath.join(directory, EXPORT_SUMMARY)
    if not fs.exists(summary_path):
        return {}
    with fs.open(summary_path, "r") as f:
        parts = json.load(f).get("parts") or {}
    out: dict[int, list[str]] = {}
    for name, part in parts.items():
        m = _PART_RE.search(name)
        if m:
            out[int(m.group(1))] = [f for f in part.get("random_weights") or [] if f in folders]
    return out


def random_weight_folders(sources: Sequence[ShardSource]) -> list[str]:
    """Folders any of ``sources`` holds from random weights (their ledger or export says so)."""
    return sorted(set().union(*(s.random_weights for s in sources))) if sources else []


# -- reading tars ---------------------------------------------------------------------------
def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for very large sizes
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].decode("utf-8").partition("=")
        out[key] = value
        pos += length
    return out


_FILE_KINDS = (b"0", b"\0", b"7")  # regular files (tarfile's isfile)
_HEADER_KINDS = (b"x", b"g", b"L")  # pax headers and GNU long names: metadata, not members


def iter_tar_members(url: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) for each member, in tar order, streaming, with the store's rules."""
    with fsspec.open(url, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        gzipped = magic == GZIP_MAGIC  # token shards may be gzip'd tars under the .tar name
        f = gzip.GzipFile(fileobj=raw) if gzipped else raw
        pending: dict[str, str] = {}
        inflated = 0
        while True:
            header = f.read(512)
            if len(header) < 512 or header == b"\0" * 512:
                return
            size = _octal(header[124:136])
            if size > MAX_MEMBER_BYTES:  # e.g. a gzip bomb: refuse before inflating it
                raise UnsafeTarMember(f"{url}: member of {size:,} bytes exceeds {MAX_MEMBER_BYTES:,}; "
                                      "refusing the shard")
            inflated += 512 + size
            if gzipped and inflated > MAX_SHARD_BYTES:
                raise UnsafeTarMember(f"{url}: gzip shard expands beyond {MAX_SHARD_BYTES:,} bytes; refusing it")
            kind = header[156:157]
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{url}: truncated tar member")
            if size % 512:
                f.read(512 - size % 512)
            if kind in _HEADER_KINDS:
                if kind == b"x":  # pax header for the next member
                    pending.update(_pax_records(data))
                elif kind == b"L":  # GNU long name for the next member
                    pending["path"] = data.rstrip(b"\0").decode("utf-8")
                continue  # a global pax header ("g") sets nothing a member name needs
            name = pending.get("path")
            if name is None:
                name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" else ""
                name = f"{prefix}/{name}" if prefix else name
            if kind not in _FILE_KINDS:
                raise UnsafeTarMember(f"{url}: member {name!r} is not a regular file")
            if "size" in pending:
                raise ValueError(f"{url}: pax size overrides are not supported ({name})")
            pending = {}
            try:
                key, ext = split_member_name(name)
            except UnsafeTarMember as exc:
                raise UnsafeTarMember(f"{url}: refusing member name ({exc})") from None
            yield key, ext, data


def iter_zipped_tar(source: ShardSource) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """Members of every folder's tar, grouped by key; divergence raises ValueError."""
    folders = list(source.urls)
    iterators = {f: iter_tar_members(source.urls[f]) for f in folders}
    position = 0
    while True:
        items = {f: next(iterators[f], None) for f in folders}
        ended = [f for f, item in items.items() if item is None]
        if len(ended) == len(folders):
            return
        first = folders[0]
        if ended:
            longer = next(f for f in folders if items[f] is not None)
            raise ValueError(
                f"shard {source.index}: key divergence at sample {position}: folder '{ended[0]}' has no more "
                f"samples but folder '{longer}' has key '{items[longer][0]}' ({source.urls[ended[0]]})"
            )
        ref_key = items[first][0]
        for f in folders[1:]:
            if items[f][0] != ref_key:
                raise ValueError(
                    f"shard {source.index}: key divergence at sample {position}: folder '{first}' has key "
                    f"'{ref_key}' but folder '{f}' has key '{items[f][0]}' "
                    f"({source.urls[first]} vs {source.urls[f]})"
                )
        yield ref_key, {f: (items[f][1], items[f][2]) for f in folders}
        position += 1


# -- reading Parquet parts ------------------------------------------------------------------
def iter_parquet_rows(source: ShardSource) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of one export part as (key, {folder: payload}).

    Token and crop columns give ``("parquet", nested list)``. A text column whose field
    metadata names the member extension it was exported from (``prism4m.ext``: ``txt``,
    ``json``; pipeline/export.py) gives ``(ext, bytes)``, decoded like the tar member it
    was; other text columns give ``("parquet", str)``. Nulls give None (an invalid record)."""
    import pyarrow.parquet as pq

    url = next(iter(source.urls.values()))
    folders = list(source.urls)
    with fsspec.open(url, "rb") as f:
        table = pq.ParquetFile(f)
        schema = table.schema_arrow
        missing = [c for c in folders if c not in schema.names]
        if missing:
            raise ValueError(f"{url}: Parquet export has no column(s) {missing}")
        exts = {fo: (schema.field(fo).metadata or {}).get(EXT_METADATA_KEY) for fo in folders}
        exts = {fo: e.decode() for fo, e in exts.items() if e}
        for batch in table.iter_batches(columns=["key", *folders], batch_size=256):
            columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
            for row in range(batch.num_rows):
                payload = {}
                for fo in folders:
                    value = columns[fo][row]
                    if fo in exts:
                        payload[fo] = None if value is None else (exts[fo], value.encode("utf-8"))
                    else:
                        payload[fo] = ("parquet", value)
                yield columns["key"][row], payload


# -- any shard ------------------------------------------------------------------------------
def iter_shard(source: ShardSource) -> Iterator[tuple[str, dict[str, Any]]]:
    return iter_parquet_rows(source) if source.kind == "parquet" else iter_zipped_tar(source)


def shard_length(source: ShardSource) -> int:
    """Samples in a shard: the ledger's count, else counted from the first folder."""
    if source.n_samples is None:
        if source.kind == "parquet":
            import pyarrow.parquet as pq

            with fsspec.open(next(iter(source.urls.values())), "rb") as f:
                source.n_samples = pq.ParquetFile(f).metadata.num_rows
        else:
            source.n_samples = sum(1 for _ in iter_tar_members(next(iter(source.urls.values()))))
    return source.n_samples


def peek_num_tokens(sources: Sequence[ShardSource], folder: str) -> int | None:
    """Token count per crop row of ``folder``, read from the first valid sample."""
    for source in sources[:1]:
        for key, members in iter_shard(ShardSource(source.index, {folder: source.urls[folder]}, kind=source.kind)):
            if members[folder] is None:  # a null in the Parquet export
                continue
            ext, data = members[folder]
            if ext == "parquet" and data:
                return len(data[0])
            if ext.endswith("npy") and data:
                tokens = decode_npy_view(data)
                return int(tokens.reshape(tokens.shape[0], -1).shape[1]) if tokens.ndim > 1 else int(tokens.shape[0])
    return None
