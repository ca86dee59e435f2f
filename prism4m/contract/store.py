"""The dataset root on any fsspec URL: layout, shard tars, the ledger and atomic commits.

Everything that reads or writes a dataset root goes through :class:`DatasetStore`, so the
contract of docs/DATASET.md lives in one place:

- a shard of a folder is visible only once its ledger record exists (the record is the
  last file a unit writes);
- files are written under ``_tmp/`` and moved into place, so a killed writer leaves
  nothing a reader could take for finished work;
- tar members are written deterministically (fixed order, mtime, owner, mode).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import io
import json
import posixpath
import re
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import fsspec

SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.(tar|json|jsonl)$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
MANIFEST = "prism4m.json"
LEDGER_DIR = "_ledger"
PLAN_DIR = "_plan"  # what a root plans and records beside its data (ingest plan, producers)
ERRORS_DIR = "_errors"
TMP_DIR = "_tmp"
FORMAT_VERSION = "prism4m/1"
TMP_GRACE_S = 15 * 60  # _tmp/ entries older than this belong to no live writer


class UnsafeTarMember(ValueError):
    """A tar member whose name could escape its folder or break key alignment."""


class CorruptShard(ValueError):
    """A shard that is not a readable (gzip'd) tar: truncated, or damaged since it was committed."""


def absolute_url(url: str) -> str:
    """A local path as an absolute path; any other fsspec URL unchanged.

    Ray workers do not share the driver's working directory: a relative root or source must
    be resolved on the driver, before anything is shipped to them.
    """
    import os

    protocol, path = fsspec.core.split_protocol(url)
    if protocol not in (None, "file", "local"):
        return url
    return os.path.abspath(os.path.expanduser(path))


def shard_name(index: int, ext: str = "tar") -> str:
    return f"shard-{index:06d}.{ext}"


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes: the same object always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def producer_hash(producer: dict) -> str:
    return sha256_hex(canonical_json(producer))[:16]


def content_hash(record: dict | None) -> str | None:
    """What a reader of a committed shard depends on: its tar's sha256 (a recommit changes it).

    Planners compare it with the `inputs` a dependent shard recorded to find stale work."""
    if record is None:
        return None
    return next(iter(record["files"].values()))["sha256"][:16]


def keys_digest(keys: Iterable[str]) -> str:
    return sha256_hex("\n".join(keys).encode())[:16]


def split_member_name(name: str) -> tuple[str, str]:
    """``KEY.ext`` → (KEY, ext), refusing names that could escape or misalign.

    webdataset takes the key up to the first dot, so keys must not contain dots; a member
    with a directory part, an absolute path or ``..`` is refused outright.
    """
    if name.startswith("/") or "\\" in name or "/" in name or name in ("", ".", ".."):
        raise UnsafeTarMember(f"tar member {name!r}: path components are not allowed")
    if ".." in name.split("."):
        raise UnsafeTarMember(f"tar member {name!r}: '..' is not allowed")
    key, dot, ext = name.partition(".")
    if not dot or not KEY_PATTERN.match(key):
        raise UnsafeTarMember(f"tar member {name!r}: expected KEY.ext with KEY in [A-Za-z0-9_-]")
    return key, ext


@dataclass(frozen=True)
class Member:
    key: str
    ext: str
    data: bytes

    @property
    def is_invalid(self) -> bool:
        """Zero bytes mark an explicit invalid record (docs/DATASET.md)."""
        return len(self.data) == 0


COMPRESSIONS = (None, "gzip")
GZIP_MAGIC = b"\x1f\x8b"
MAX_SHARD_BYTES = 4 * 2**30  # a decompressed shard larger than this is refused (gzip bomb guard)
MAX_MEMBER_BYTES = 2**30  # a member larger than this is refused (one sample's data is kilobytes to megabytes)


def shard_compression(name: str | None) -> str | None:
    """A shard compression setting as build_tar takes it: "gzip", or None for plain tars
    ("none" as users spell it on the command line and in job specs)."""
    value = None if name in (None, "none") else name
    if value not in COMPRESSIONS:
        raise ValueError(f"unknown shard compression {name!r}; choose gzip or none")
    return value


def build_tar(members: Iterable[Member], compression: str | None = None) -> bytes:
    """Deterministic ustar bytes of ``members`` in the given order, optionally gzip-compressed.

    Same member layout as webdataset's TarWriter (KEY.ext, regular files) but written with
    the standard library: importing webdataset pulls in torch (~2-10 s per Ray worker), and
    we need fixed mtime/owner/mode for byte-identical reruns anyway.

    ``compression="gzip"`` compresses the whole tar (gzip mtime 0, so still byte-identical
    across runs) and keeps the ``.tar`` name: tarfile ("r:*"), GNU tar and webdataset (so
    ml-4m's loader) detect gzip by its magic bytes. Whole-tar compression removes the 512-byte
    header and padding each small member costs, which per-member compression cannot.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown shard compression {compression!r}; choose from {COMPRESSIONS}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(f"{m.key}.{m.ext}")
            info.size = len(m.data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(m.data))
    if compression == "gzip":
        return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)
    return buf.getvalue()


def gunzip_bounded(data: bytes, source: str, limit: int = MAX_SHARD_BYTES) -> bytes:
    """Decompress a gzip'd shard, refusing one that would expand beyond ``limit`` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise UnsafeTarMember(f"{source}: gzip shard expands beyond {limit:,} bytes; refusing it")
    return out


def iter_tar_bytes(data: bytes, source: str = "<tar>") -> Iterator[Member]:
    """Members of a tar held in memory (plain or gzip'd), validated (no links, no paths, KEY.ext names)."""
    try:
        yield from _iter_tar_members(data, source)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        # the failure line then names the shard, not just tarfile's "unexpected end of data"
        raise CorruptShard(f"{source}: not a readable tar ({exc}); truncated or damaged") from None


def _iter_tar_members(data: bytes, source: str) -> Iterator[Member]:
    if data[:2] == GZIP_MAGIC:
        data = gunzip_bounded(data, source)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                raise UnsafeTarMember(f"{source}: member {info.name!r} is not a regular file")
            try:
                key, ext = split_member_name(info.name)
            except UnsafeTarMember as exc:
                raise UnsafeTarMember(f"{source}: {exc}") from None
            if info.size > MAX_MEMBER_BYTES:
                raise UnsafeTarMember(f"{source}: member of {info.size:,} bytes exceeds {MAX_MEMBER_BYTES:,}; "
                                      "refusing the shard")
            f = tar.extractfile(info)
            yield Member(key, ext, f.read() if f else b"")


class DatasetStore:
    """A dataset root (local path or fsspec URL such as ``s3://bucket/ds``)."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.url = absolute_url(str(root)).rstrip("/") or "/"
        self.fs, path = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.path = path.rstrip("/") or "/"
        self.storage_options = storage_options or {}

    def __repr__(self) -> str:
        return f"DatasetStore({self.url!r})"

    def __reduce__(self):
        # Ray ships stores to actors; rebuild the filesystem there rather than pickling it.
        return (DatasetStore, (self.url, self.storage_options))

    # ----------------------------------------------------------------- paths
    def p(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def shard_path(self, folder: str, index: int) -> str:
        return self.p(folder, shard_name(index))

    def ledger_path(self, folder: str, index: int) -> str:
        return self.p(LEDGER_DIR, folder, shard_name(index, "json"))

    def errors_path(self, folder: str, index: int) -> str:
        return self.p(ERRORS_DIR, folder, shard_name(index, "jsonl"))

    def failed_path(self, folder: str, index: int) -> str:
        return self.p(ERRORS_DIR, folder, "_failed", shard_name(index, "json"))

    # ----------------------------------------------------------------- small files
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def looks_like_root(self) -> bool:
        """Whether anything prism4m writes is here: a ledger, a manifest or an ingest plan."""
        return any(self.exists(self.p(marker)) for marker in (LEDGER_DIR, MANIFEST, PLAN_DIR))

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def tmp_path(self) -> str:
        """A fresh temporary name under _tmp/ (created on local filesystems)."""
        base = self.p(TMP_DIR)
        self.fs.makedirs(base, exist_ok=True)
        return posixpath.join(base, uuid.uuid4().hex)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        tmp = self.tmp_path()
        self.fs.pipe_file(tmp, data)
        self._move(tmp, path)

    def _move(self, src: str, dst: str) -> None:
        parent = posixpath.dirname(dst)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.mv(src, dst)

    # ----------------------------------------------------------------- ledger
    def ledger_folders(self) -> list[str]:
        base = self.p(LEDGER_DIR)
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.basename(d.rstrip("/")) for d in self.fs.ls(base, detail=False)
                      if self.fs.isdir(d))

    def ledger(self, folder: str) -> dict[int, dict]:
        """All commit records of ``folder``, by shard index (the only truth about shards)."""
        base = self.p(LEDGER_DIR, folder)
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return {}
        wanted = {}
        for name in names:
            m = SHARD_PATTERN.match(posixpath.basename(name))
            if m and m.group(2) == "json":
                wanted[name] = int(m.group(1))
        if not wanted:
            return {}
        blobs = self.fs.cat(list(wanted))  # one batched call: concurrent on object stores
        return {wanted[path]: json.loads(blob) for path, blob in blobs.items()}

    def record(self, folder: str, index: int) -> dict | None:
        """The commit record of one shard of ``folder``; None when it is not committed."""
        path = self.ledger_path(folder, index)
        return self.read_json(path) if self.exists(path) else None

    def shard_errors(self, folder: str, index: int) -> list[dict]:
        """The per-sample error lines of one shard of ``folder`` (none written: [])."""
        path = self.errors_path(folder, index)
        if not self.exists(path):
            return []
        return [json.loads(line) for line in self.read_bytes(path).decode().splitlines() if line.strip()]

    def failed_units(self, folder: str) -> dict[int, dict]:
        base = self.p(ERRORS_DIR, folder, "_failed")
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            m = SHARD_PATTERN.match(posixpath.basename(name))
            if m:
                out[int(m.group(1))] = json.loads(self.fs.cat_file(name))
        return out

    def record_failure(self, folder: str, index: int, reason: str, message: str) -> None:
        record = {"folder": folder, "shard": index, "reason": reason, "message": message[-4000:],
                  "at": now_iso()}
        self.write_bytes_atomic(self.failed_path(folder, index), canonical_json(record))

    def read_errors(self, folder: str) -> list[dict]:
        """Per-sample error lines of ``folder`` for committed shards (and ingest's source list)."""
        base = self.p(ERRORS_DIR, folder)
        try:
            names = sorted(self.fs.ls(base, detail=False))
        except FileNotFoundError:
            return []
        committed = self.ledger(folder) if folder != "ingest" else None
        out = []
        for name in names:
            bn = posixpath.basename(name)
            m = SHARD_PATTERN.match(bn)
            if not bn.endswith(".jsonl"):
                continue
            if m and committed is not None and int(m.group(1)) not in committed:
                continue  # errors of uncommitted work are not yet true
            for line in self.fs.cat_file(name).decode().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    # ----------------------------------------------------------------- shards
    def iter_shard(self, folder: str, index: int, *, record: dict | None = None) -> Iterator[Member]:
        """Members of a committed shard, in order. Refuses shards without a ledger record."""
        if record is None:
            path = self.ledger_path(folder, index)
            if not self.fs.exists(path):
                raise FileNotFoundError(f"{self.url}: {folder}/{shard_name(index)} has no ledger record "
                                        "(not committed); refusing to read it")
        src = f"{self.url}/{folder}/{shard_name(index)}"
        yield from iter_tar_bytes(self.read_bytes(self.shard_path(folder, index)), source=src)

    def read_shard(self, folder: str, index: int) -> list[Member]:
        return list(self.iter_shard(folder, index))

    def commit_unit(self, index: int, outputs: dict[str, list[Member]], records: dict[str, dict],
                    errors: dict[str, list[dict]] | None = None) -> dict[str, dict]:
        """Commit the shards of one unit of work: tars and error lines first, ledger last.

        ``outputs`` maps folder → members (in rgb order); ``records`` maps folder → the ledger
        fields the caller knows (producer, inputs, invalid, …). Returns the written records.
        """
        errors = errors or {}
        staged: list[tuple[str, str]] = []
        written: dict[str, dict] = {}
        for folder, members in outputs.items():
            data = build_tar(members, records[folder].get("compression"))
            tmp = self.tmp_path()
            self.fs.pipe_file(tmp, data)
            staged.append((tmp, self.shard_path(folder, index)))
            keys = [m.key for m in members]
            rec = dict(records[folder])
            rec.update({
                "folder": folder,
                "shard": index,
                "n_samples": len(members),
                "keys_digest": keys_digest(keys),
                "files": {f"{folder}/{shard_name(index)}": {"bytes": len(data), "sha256": sha256_hex(data)}},
            })
            rec.setdefault("invalid", [m.key for m in members if m.is_invalid])
            rec["producer_hash"] = producer_hash(rec["producer"])
            written[folder] = rec
            lines = errors.get(folder, [])
            if lines:
                tmp_e = self.tmp_path()
                self.fs.pipe_file(tmp_e, "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines).encode())
                staged.append((tmp_e, self.errors_path(folder, index)))
                counts: dict[str, int] = {}
                for x in lines:
                    counts[x["reason"]] = counts.get(x["reason"], 0) + 1
                rec["errors_by_reason"] = counts
            else:
                rec["errors_by_reason"] = {}
                if self.fs.exists(self.errors_path(folder, index)):
                    self.fs.rm(self.errors_path(folder, index))
        for tmp, dst in staged:
            self._move(tmp, dst)
        for folder, rec in written.items():
            rec["committed_at"] = now_iso()
            self.write_bytes_atomic(self.ledger_path(folder, index), canonical_json(rec))
            failed = self.failed_path(folder, index)
            if self.fs.exists(failed):
                self.fs.rm(failed)
        return written

    def clean_tmp(self, older_than_s: float = TMP_GRACE_S) -> int:
        """Remove writers' orphans from _tmp/ (a killed writer leaves its staged files there).

        Only entries older than ``older_than_s``: a live writer (another command on the same
        root) moves its staged files into place within seconds. Returns how many were removed.
        """
        base = self.p(TMP_DIR)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return 0
        cutoff = _dt.datetime.now(_dt.timezone.utc).timestamp() - older_than_s
        old = [e["name"] for e in entries if _modified(e) is not None and _modified(e) < cutoff]
        for name in old:
            try:
                self.fs.rm(name, recursive=True)
            except FileNotFoundError:
                pass
        return len(old)

    # ----------------------------------------------------------------- manifest
    def read_manifest(self) -> dict:
        path = self.p(MANIFEST)
        return self.read_json(path) if self.fs.exists(path) else {}

    def write_manifest(self, manifest: dict) -> None:
        self.write_bytes_atomic(self.p(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())


def _modified(entry: dict) -> float | None:
    """A listing entry's modification time as a POSIX timestamp (local files and object stores)."""
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified")))
    if isinstance(value, _dt.datetime):
        return value.timestamp() if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc).timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
