"""Corpus readers: what items a source holds and how to read their bytes.

A source is a local path or fsspec URL to one of:
- a directory tree of images (caption sidecars `NAME.txt` next to `NAME.jpg` are kept);
- tar / WebDataset shards (one sample per key; `.txt`/`.caption`/`.json` captions kept);
- Parquet files with an image-bytes column (and optionally a caption/text column);
- an img2dataset output folder (any of its three output formats; its metadata Parquet
  (`00000.parquet` beside `00000.tar` or the folder `00000/`) and `*_stats.json` files are
  recognised and skipped, not reported as bad input).
Listing is cheap and runs on the driver; reading tar members and Parquet rows happens in
the scan and ingest tasks.

Only regular files are read (a named pipe would block the reader forever; sockets and
devices are not corpus content): anything else is refused as `unsupported`. A tar is read
member by member: an unsafe member (absolute or '..' path, link) is refused as `unsafe`, a
repeated member name as `duplicate_member` (the first is kept), a second image of one sample
(`a.jpg` and `a.png`) as `duplicate_member` too (the first in the tar is ingested), a sample
without an image member as `unsupported`; the tar's other samples are still read.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import fsspec

from prism4m.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "jfif"}
CAPTION_EXTS = ("txt", "caption")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "img", "image_bytes", "bytes", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "alt", "alt_text")
MAX_TAR_MEMBER_BYTES = 1 << 30  # a source tar member is read into memory whole


class SourceError(ValueError):
    """A source file that cannot be read as a whole; ``reason`` is its error line's code."""

    reason = "undecodable"


class UnsafeSource(SourceError):
    """A source file refused whole for escaping. Tar members that escape (absolute/'..'
    paths, links) are refused one at a time instead (RawItem.reason), keeping the rest."""

    reason = "unsafe"


class UnsupportedSource(SourceError):
    """A well-formed source file that holds no images (a Parquet without an image column)."""

    reason = "unsupported"


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


def _not_regular(info: dict, local: bool) -> str | None:
    """What a listed entry is when it is not a regular file (None: a regular file).

    fsspec's local listing types a symlink itself ("other"): follow it, as reading would."""
    if info.get("type") == "file" and not info.get("islink"):
        return None
    if not local:
        return None if info.get("type") == "file" else f"of type {info.get('type')!r}, not a file"
    try:
        mode = os.stat(info["name"]).st_mode
    except FileNotFoundError:
        return "a broken symbolic link"
    except OSError as exc:
        return f"not readable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a link to a directory (not followed)")):
        if test(mode):
            return what
    return "not a regular file"


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

    local = protocol in ("file", "local")
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise UserError(f"source {source}: no such file or directory") from None
    if info.get("type") != "directory" and _not_regular(info, local):
        raise UserError(f"source {source}: {_not_regular(info, local)}, not a folder or a file")
    if info.get("type") != "directory":
        folders, base = iter([([info], [])]), posixpath.dirname(root)
    else:
        folders = ((list(files.values()), [posixpath.join(d, name) for name in dirs])
                   for d, dirs, files in fs.walk(root, detail=True))
        base = root
    img2dataset = False
    chunks: list[pa.Table] = []
    skipped: list[SkippedFile] = []
    json_files: list[pa.Array] = []  # img2dataset metadata, or unsupported: known once all is listed
    for infos, subdirs in folders:
        paths = []
        for info in infos:
            what = _not_regular(info, local)
            if what is None:
                paths.append(info["name"])
            else:  # never opened: reading a named pipe blocks until someone writes to it
                rel = posixpath.relpath(info["name"], base) if base else info["name"]
                skipped.append(SkippedFile(url(info["name"]), rel, "unsupported",
                                           f"{rel}: {what}; only regular files are read"))
        names = set(paths)
        # img2dataset (files and webdataset formats) writes 00000.parquet beside 00000.tar or
        # the folder 00000/: per-sample metadata (url, status, …), not images
        siblings = set(subdirs) | {p[:-4] for p in paths if _ext(p) == "tar"}
        rows: list[tuple] = []  # (uri, rel, kind, caption_uri)
        jsons = []
        for p in paths:
            rel = posixpath.relpath(p, base) if base else p
            ext = _ext(p)
            stem = p[: -(len(ext) + 1)] if ext else p
            if ext in IMAGE_EXTS:
                cap = next((stem + "." + c for c in CAPTION_EXTS if stem + "." + c in names), None)
                rows.append((url(p), rel, "image", url(cap) if cap else None))
            elif ext == "parquet" and stem in siblings:
                continue  # img2dataset metadata of the tar / folder of the same name
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
    reason: str | None = None   # set: a refused item (reason code), never a sample; `message` says why
    message: str | None = None


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
    SourceError (a ValueError) with the file named. A tar member refused on its own (unsafe
    path or link, repeated name, sample without an image) comes as an item with ``reason``
    set and no data, only when ``want`` is None (the scan). Bad image bytes are left to the
    decoder.
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
    names: dict[str, dict[str, str]] = {}  # sample key → extension → member name
    refused: list[RawItem] = []

    def refuse(name: str, reason: str, why: str) -> None:
        if want is None:
            refused.append(RawItem(f"{f.rel}#{name}", f.uri, name, b"", None, reason,
                                   f"{f.uri}: tar member {name!r} {why}"))

    try:
        with fsspec.open(f.uri, "rb", **so) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for info in tar:
                name = info.name
                # A member that points outside the archive (absolute path, '..', a link) is never
                # legitimate in a WebDataset shard: it is refused, never extracted; the rest is read.
                if name.startswith("/") or "\\" in name or ".." in name.split("/"):
                    refuse(name, "unsafe", "refused: absolute or '..' path")
                    continue
                if info.issym() or info.islnk():
                    refuse(name, "unsafe", f"refused: a link (to {info.linkname!r})")
                    continue
                if info.isdir():
                    continue
                if not info.isfile():  # fifo, device: no bytes to read
                    refuse(name, "unsupported", "is not a regular file (a pipe or device entry)")
                    continue
                if info.size > MAX_TAR_MEMBER_BYTES:  # read whole into memory: bound it (gzip bombs)
                    refuse(name, "too_large", f"declares {info.size:,} bytes (limit {MAX_TAR_MEMBER_BYTES:,})")
                    continue
                d, base = posixpath.split(name)
                if base.startswith("."):
                    continue
                # WebDataset: the key is the name up to the first dot of its base name
                key, _, ext = base.partition(".")
                gkey, ext = posixpath.join(d, key), ext.lower()
                fields = names.setdefault(gkey, {})
                if ext in fields:
                    refuse(name, "duplicate_member",
                           f"repeats {fields[ext]!r} (sample {gkey!r}, extension {ext!r}); the first is kept")
                    continue
                fields[ext] = name
                groups.setdefault(gkey, {})[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SourceError(f"{f.uri}: unreadable tar ({type(exc).__name__}: {exc})") from None
    yield from refused
    for gkey, members in groups.items():  # insertion order: the tar's order
        img_ext = next((e for e in members if e in IMAGE_EXTS), None)
        sid = f"{f.rel}#{gkey}"
        if want is not None and sid not in want:
            continue
        if img_ext is None:
            if want is None:
                listed = ", ".join(repr(n) for n in names[gkey].values())
                exts = ", ".join(repr(e) for e in members)
                yield RawItem(sid, f.uri, next(iter(names[gkey].values())), b"", None, "unsupported",
                              f"{f.uri}: sample {gkey!r} ({listed}) has no image member: its extensions are "
                              f"{exts} (a WebDataset key ends at the first dot of the name)")
            continue
        others = [names[gkey][e] for e in members if e in IMAGE_EXTS and e != img_ext]
        if others and want is None:  # WebDataset has one image per sample: say which one is used
            yield RawItem(f"{f.rel}#{others[0]}", f.uri, others[0], b"", None, "duplicate_member",
                          f"{f.uri}: sample {gkey!r} has {len(others) + 1} images; {names[gkey][img_ext]!r} "
                          f"(first in the tar) is kept, {', '.join(repr(o) for o in others)} ignored")
        caption = None
        for c in CAPTION_EXTS:
            if c in members:
                caption = members[c].decode("utf-8", "replace").strip()
                break
        if caption is None and "json" in members:
            caption = _caption_from_json(members["json"])
        yield RawItem(sid, f.uri, names[gkey][img_ext], members[img_ext], caption)


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
        raise SourceError(f"{f.uri}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
    img_col, cap_col, is_struct = parquet_columns(pf.schema_arrow)
    if img_col is None:
        raise UnsupportedSource(f"{f.uri}: no image-bytes column (looked for {', '.join(IMAGE_COLUMNS)})")
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
