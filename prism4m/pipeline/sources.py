"""Corpus readers: what items a source holds and how to read their bytes.

A source is a local path or fsspec URL to one of:
- a directory tree of images (caption sidecars `NAME.txt` next to `NAME.jpg` are kept);
- tar / WebDataset shards (one sample per key; `.txt`/`.caption`/`.json` captions kept);
- Parquet files with an image-bytes column (and optionally a caption/text column);
- an img2dataset output folder (any of its three output formats; its metadata Parquet
  and `*_stats.json` files are recognised and skipped, not reported as bad input).
Listing is cheap and runs on the driver; reading tar members and Parquet rows happens in
the scan and ingest tasks.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import fsspec

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "jfif"}
CAPTION_EXTS = ("txt", "caption")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "img", "image_bytes", "bytes", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "alt", "alt_text")
MAX_TAR_MEMBER_BYTES = 1 << 30  # a source tar member is read into memory whole


class UnsafeSource(ValueError):
    """A source container that tries to escape (absolute/'..' member paths, links)."""


@dataclass(frozen=True)
class SourceFile:
    """One file of the corpus and how to read it."""

    uri: str          # fsspec URL of the file
    rel: str          # path relative to the source root (stable identity)
    kind: str         # "image" | "tar" | "parquet"
    caption_uri: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    uri: str
    rel: str
    reason: str
    message: str


def _ext(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


LISTING_COLUMNS = ("uri", "rel", "kind", "caption_uri")  # a listing's columns: SourceFile's fields


def list_source(source: str, storage_options: dict | None = None) -> tuple[pa.Table, list[SkippedFile]]:
    """Every readable file of ``source`` in a stable (sorted) order, and the files refused.

    The files come as a table with SourceFile's fields as columns: a few bytes per file, where
    a SourceFile each cost hundreds (a corpus of loose images has one file per sample). The
    tree is read a directory at a time (a caption sidecar sits next to its image), so no
    listing detail of the whole corpus is held at once either.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"

    def url(p: str) -> str:
        return prefix + p if prefix and not p.startswith(prefix) else p

    if not fs.exists(root):
        raise FileNotFoundError(f"source {source!r} does not exist")
    if fs.isfile(root):
        folders, base = iter([[root]]), posixpath.dirname(root)
    else:
        folders = ([info["name"] for info in files.values()] for _, _, files in fs.walk(root, detail=True))
        base = root
    img2dataset = False
    chunks: list[pa.Table] = []
    skipped: list[SkippedFile] = []
    json_files: list[pa.Array] = []  # img2dataset metadata, or unsupported: known once all is listed
    for paths in folders:
        names = set(paths)
        rows: list[tuple] = []  # (uri, rel, kind, caption_uri)
        jsons = []
        for p in paths:
            rel = posixpath.relpath(p, base) if base else p
            ext = _ext(p)
            stem = p[: -(len(ext) + 1)] if ext else p
            if ext in IMAGE_EXTS:
                cap = next((stem + "." + c for c in CAPTION_EXTS if stem + "." + c in names), None)
                rows.append((url(p), rel, "image", url(cap) if cap else None))
            elif ext in ("tar", "parquet"):
                rows.append((url(p), rel, ext, None))
            elif ext in CAPTION_EXTS and any(stem + "." + e in names for e in IMAGE_EXTS):
                continue  # caption sidecar, read with its image
            elif posixpath.basename(p).startswith("."):
                continue  # hidden files (.DS_Store, ._foo) are not corpus content
            elif ext == "json":
                img2dataset = img2dataset or p.endswith("_stats.json")
                jsons.append(p)
            else:
                skipped.append(_unsupported(url(p), rel, ext))
        chunks.append(_listing_table(rows))
        if jsons:
            json_files.append(pa.array(jsons, pa.string()))
    if not img2dataset:  # per-sample metadata and shard statistics of img2dataset are not corpus content
        for p in (p for jsons in json_files for p in jsons.to_pylist()):
            skipped.append(_unsupported(url(p), posixpath.relpath(p, base) if base else p, "json"))
    files = pa.concat_tables(chunks) if chunks else _listing_table([])
    skipped.sort(key=lambda s: s.uri)  # folders come in walk order; paths sort as uris do
    return files.take(pc.sort_indices(files["uri"])), skipped


def _listing_table(rows: list[tuple]) -> pa.Table:
    """(uri, rel, kind, caption_uri) rows as a listing table."""
    import pyarrow as pa

    return pa.table([pa.array(list(col), pa.string()) for col in (zip(*rows) if rows else [()] * 4)],
                    names=list(LISTING_COLUMNS))


def _unsupported(uri: str, rel: str, ext: str) -> SkippedFile:
    return SkippedFile(uri, rel, "unsupported",
                       f"{rel}: extension {ext or '(none)'!r} is not an image, tar or Parquet file")


def source_files(listing: pa.Table) -> list[SourceFile]:
    """A listing's rows as SourceFile (a scan batch at a time)."""
    return [SourceFile(**row) for row in listing.to_pylist()]


@dataclass(frozen=True)
class RawItem:
    """One sample's source bytes, as read from a SourceFile."""

    source_id: str        # stable identity: rel path, or rel path + '#' + member / row
    uri: str
    member: str | None
    data: bytes
    caption: str | None = None


def _caption_from_json(data: bytes) -> str | None:
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if isinstance(obj, dict):
        for k in CAPTION_COLUMNS:
            if isinstance(obj.get(k), str):
                return obj[k]
    return None


def iter_items(f: SourceFile, storage_options: dict | None = None, want: set[str] | None = None) -> Iterator[RawItem]:
    """Items of one source file. ``want`` restricts to these source ids (ingest re-reads).

    Problems of the container itself (unreadable tar, Parquet without an image column) raise
    ValueError with the file named; problems of one item are left to the decoder.
    """
    so = storage_options or {}
    if f.kind == "image":
        if want is not None and f.rel not in want:
            return
        with fsspec.open(f.uri, "rb", **so) as fh:
            data = fh.read()
        caption = None
        if f.caption_uri:
            with fsspec.open(f.caption_uri, "rb", **so) as fh:
                caption = fh.read().decode("utf-8", "replace").strip()
        yield RawItem(f.rel, f.uri, None, data, caption)
    elif f.kind == "tar":
        yield from _iter_tar(f, so, want)
    elif f.kind == "parquet":
        yield from _iter_parquet(f, so, want)
    else:
        raise ValueError(f"{f.uri}: unknown source kind {f.kind}")


def _iter_tar(f: SourceFile, so: dict, want: set[str] | None) -> Iterator[RawItem]:
    import tarfile

    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with fsspec.open(f.uri, "rb", **so) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                name = info.name
                # A member that points outside the archive (absolute path, '..', a link) is
                # never legitimate in a WebDataset shard: refuse the whole file, naming it.
                if name.startswith("/") or "\\" in name or ".." in name.split("/"):
                    raise UnsafeSource(f"{f.uri}: refused: tar member {name!r} has an absolute or '..' path")
                if info.issym() or info.islnk():
                    raise UnsafeSource(f"{f.uri}: refused: tar member {name!r} is a link")
                if not info.isfile():
                    continue  # directories
                if info.size > MAX_TAR_MEMBER_BYTES:  # read whole into memory: bound it (gzip bombs)
                    raise UnsafeSource(f"{f.uri}: refused: tar member {name!r} declares {info.size:,} bytes "
                                       f"(limit {MAX_TAR_MEMBER_BYTES:,})")
                d, base = posixpath.split(name)
                if base.startswith("."):
                    continue
                key, _, ext = base.partition(".")
                gkey = posixpath.join(d, key)
                if gkey not in groups:
                    groups[gkey] = {}
                    order.append(gkey)
                groups[gkey][ext.lower()] = tar.extractfile(info).read()
    except UnsafeSource:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{f.uri}: unreadable tar ({type(exc).__name__}: {exc})") from None
    for gkey in order:
        members = groups[gkey]
        img_ext = next((e for e in members if e in IMAGE_EXTS), None)
        sid = f"{f.rel}#{gkey}"
        if want is not None and sid not in want:
            continue
        if img_ext is None:
            yield RawItem(sid, f.uri, gkey, b"", None)  # decoder reports "unsupported"
            continue
        caption = None
        for c in CAPTION_EXTS:
            if c in members:
                caption = members[c].decode("utf-8", "replace").strip()
                break
        if caption is None and "json" in members:
            caption = _caption_from_json(members["json"])
        yield RawItem(sid, f.uri, f"{gkey}.{img_ext}", members[img_ext], caption)


def parquet_columns(schema) -> tuple[str | None, str | None, bool]:
    """(image column, caption column, image column is a {bytes, path} struct)."""
    import pyarrow as pa

    img, cap, is_struct = None, None, False
    for name in IMAGE_COLUMNS:
        if name in schema.names:
            t = schema.field(name).type
            if pa.types.is_binary(t) or pa.types.is_large_binary(t):
                img = name
                break
            if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
                img, is_struct = name, True
                break
    for name in CAPTION_COLUMNS:
        if name in schema.names and (str(schema.field(name).type) in ("string", "large_string")):
            cap = name
            break
    return img, cap, is_struct


def _iter_parquet(f: SourceFile, so: dict, want: set[str] | None) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    try:
        with fsspec.open(f.uri, "rb", **so) as fh:
            pf = pq.ParquetFile(io.BytesIO(fh.read()))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a readable Parquet"
        raise ValueError(f"{f.uri}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
    img_col, cap_col, is_struct = parquet_columns(pf.schema_arrow)
    if img_col is None:
        raise ValueError(f"{f.uri}: no image-bytes column (looked for {', '.join(IMAGE_COLUMNS)})")
    row = 0
    cols = [img_col] + ([cap_col] if cap_col else [])
    for batch in pf.iter_batches(columns=cols, batch_size=256):
        imgs = batch.column(0).to_pylist()
        caps = batch.column(1).to_pylist() if cap_col else [None] * len(imgs)
        for value, caption in zip(imgs, caps):
            sid = f"{f.rel}#{row}"
            row += 1
            if want is not None and sid not in want:
                continue
            data = (value or {}).get("bytes") if is_struct else value
            yield RawItem(sid, f.uri, str(row - 1), data or b"", caption)
