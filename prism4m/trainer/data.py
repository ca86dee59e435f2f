"""Iterable loader over token shards, zipped by key across modality folders.

Sources (``discover_shards``):

- prism4m roots: ``ROOT/<folder>/shard-%06d.tar``; a shard is read only when every chosen
  folder has its ledger record ``ROOT/_ledger/<folder>/shard-%06d.json`` (DATASET.md);
- ml-4m-layout roots (no ``_ledger/``): every ``<folder>/shard-*.tar`` present in all folders;
- the Parquet export ``ROOT/_export/parquet/part-%06d.parquet`` (one part per shard).

Stream layout, chosen so that a position is a single number per worker:

- every (DDP rank, dataloader worker) pair is a *slot*; each epoch the committed shards are
  permuted with the seed and dealt round-robin to slots (or, with fewer shards than slots,
  every slot reads all shards and keeps every n-th sample);
- a per-slot shuffle buffer mixes raw members within an epoch;
- crop choice and masking draw from an RNG keyed on (seed, slot, sample ordinal), so a
  sample is the same whether it was reached by running or by skipping;
- workers batch themselves; the DataLoader hands batches out round-robin by worker, so
  "batches consumed" determines every worker's position. Resuming replays only the raw
  members of the current epoch of each slot (no decoding or masking).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from prism4m.contract.members import decode_npy
from prism4m.errors import UserError
from prism4m.contract.store import GZIP_MAGIC
from prism4m.tokenizers.export import EXPORT_SUMMARY, EXT_METADATA_KEY

from .masking import UnifiedMasker
from .modalities import EOS_ID, ModalitySpec
from .sequences import SERIALIZERS, Serializer, decode_member

CROP_FOLDER = "crop_settings"
_SHARD_RE = re.compile(r"shard-(\d+)\.(tar|json)$")
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


def _fs(root: str):
    return fsspec.core.url_to_fs(root)


def _parquet_dir(fs, path: str) -> str:
    """Where a Parquet export's parts are: ``path`` itself when it is an export directory
    (its ``_export.json``, or a name ending in "parquet"), else ``path/_export/parquet``."""
    if fs.exists(posixpath.join(path, EXPORT_SUMMARY)) or path.rstrip("/").endswith("parquet"):
        return path
    return posixpath.join(path, "_export", "parquet")


def detect_layout(root: str) -> str:
    fs, path = _fs(root)
    if fs.exists(posixpath.join(path, "_ledger")):
        return "prism4m"
    if fs.exists(posixpath.join(path, EXPORT_SUMMARY)) or fs.exists(posixpath.join(path, "_export", "parquet")) \
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
    fs, path = _fs(root)

    def url(p: str) -> str:
        return fs.unstrip_protocol(p)

    if layout == "parquet":
        directory = _parquet_dir(fs, path)
        parts = _listed_indices(fs, directory, _PART_RE)
        if not parts:
            raise UserError(f"{root}: no part-*.parquet files under {directory} (`prism4m export ROOT` writes them)")
        flagged = _export_random_weights(fs, directory, folders)
        return [ShardSource(i, {f: url(p) for f in folders}, kind="parquet", random_weights=set(flagged.get(i, ())))
                for i, p in sorted(parts.items())]

    per_folder: dict[str, dict[int, str]] = {}
    for folder in folders:
        if layout == "prism4m":
            per_folder[folder] = _listed_indices(fs, posixpath.join(path, "_ledger", folder), _SHARD_RE)
        elif layout == "ml4m":
            per_folder[folder] = _listed_indices(fs, posixpath.join(path, folder), _SHARD_RE)
        else:
            raise ValueError(f"unknown layout {layout!r}; expected auto, prism4m, ml4m or parquet")
    common = set.intersection(*(set(v) for v in per_folder.values())) if per_folder else set()
    if not common:
        counts = {f: len(v) for f, v in per_folder.items()}
        raise UserError(f"no shard is committed in every folder of {root} (committed shards per folder: {counts})")
    sources = []
    for index in sorted(common):
        if layout == "prism4m":
            urls = {f: url(posixpath.join(path, f, f"shard-{index:06d}.tar")) for f in folders}
        else:  # keep whatever zero padding the ml-4m root uses
            urls = {f: url(per_folder[f][index]) for f in folders}
        source = ShardSource(index, urls)
        if layout == "prism4m":
            for folder in folders:
                with fs.open(per_folder[folder][index], "r") as f:
                    record = json.load(f)
                source.invalid[folder] = set(record.get("invalid") or [])
                if record.get("random_weights"):
                    source.random_weights.add(folder)
                if record.get("n_samples") is not None:
                    source.n_samples = int(record["n_samples"])
        sources.append(source)
    return sources


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


MAX_MEMBER_BYTES = 2**30  # one sample's tokens are kilobytes; anything near this is hostile


def iter_tar_members(url: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) for each file member, in tar order, streaming.

    A small ustar/pax/GNU reader: the stdlib tarfile spent half the loader's time parsing
    headers. Readers refuse absolute member names and ``..`` (DATASET.md).
    """
    with fsspec.open(url, "rb") as raw:
        # Token shards may be gzip'd tars under the .tar name (DATASET.md): detect by magic.
        magic = raw.read(2)
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if magic == GZIP_MAGIC else raw
        pending: dict[str, str] = {}
        while True:
            header = f.read(512)
            if len(header) < 512 or header == b"\0" * 512:
                return
            size = _octal(header[124:136])
            if size > MAX_MEMBER_BYTES:  # e.g. a gzip bomb: refuse before inflating it
                raise ValueError(f"{url}: member of {size:,} bytes exceeds {MAX_MEMBER_BYTES:,}; refusing the shard")
            kind = header[156:157]
            data = f.read(size)
            if len(data) < size:
                raise ValueError(f"{url}: truncated tar member")
            if size % 512:
                f.read(512 - size % 512)
            if kind == b"x":  # pax header for the next member
                pending.update(_pax_records(data))
                continue
            if kind == b"L":  # GNU long name for the next member
                pending["path"] = data.rstrip(b"\0").decode("utf-8")
                continue
            if kind not in (b"0", b"\0", b"7"):
                pending = {}
                continue  # directories, links, global headers
            name = pending.get("path")
            if name is None:
                name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" else ""
                name = f"{prefix}/{name}" if prefix else name
            if "size" in pending:
                raise ValueError(f"{url}: pax size overrides are not supported ({name})")
            pending = {}
            if name.startswith("/") or ".." in name.split("/") or "/" in name:
                raise ValueError(f"{url}: refusing member name {name!r} (no paths allowed in shard members)")
            key, _, ext = name.partition(".")
            yield key, ext, data


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def load_npy(data: bytes) -> np.ndarray:
    """np.load for .npy bytes, with the header parse cached (it dominated decoding)."""
    if data[:6] != b"\x93NUMPY" or data[6] != 1:
        return decode_npy(data)
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        buf = io.BytesIO(data)
        np.lib.format.read_magic(buf)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        if dtype.hasobject:
            raise ValueError("object arrays are not token arrays")
        parsed = _NPY_HEADERS[header] = (dtype, shape, fortran)
    dtype, shape, fortran = parsed
    array = np.frombuffer(data, dtype=dtype, offset=10 + header_len, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")


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


def iter_parquet_rows(source: ShardSource) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of one export part as (key, {folder: payload}).

    Token and crop columns give ``("parquet", nested list)``. A text column whose field
    metadata names the member extension it was exported from (``prism4m.ext``: ``txt``,
    ``json``; tokenizers/export.py) gives ``(ext, bytes)``, decoded like the tar member it
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


def load_text_tokenizer(tokenizer: Any):
    """A HF ``tokenizers.Tokenizer`` from an object, a tokenizer.json path/URL or its directory."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from tokenizers import Tokenizer

    path = str(tokenizer)
    if not path.endswith(".json"):  # a tokenizer directory (card.json + tokenizer.json)
        path = path.rstrip("/") + "/tokenizer.json"
    with fsspec.open(path, "r") as f:
        return Tokenizer.from_str(f.read())


def text_tokenizer_card(tokenizer: Any) -> dict[str, Any]:
    """The card (card.json) of a text tokenizer directory, or of the directory holding a
    tokenizer.json; {} when there is none (ml-4m's published JSON, an in-memory tokenizer)."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return {}
    path = str(tokenizer)
    directory = posixpath.dirname(path.rstrip("/")) if path.endswith(".json") else path.rstrip("/")
    try:
        with fsspec.open(f"{directory}/card.json", "r") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


class SampleDecoder:
    """Raw members of one key -> {modality: token ids or None}, sharing one crop row."""

    def __init__(
        self,
        registry: Mapping[str, ModalitySpec],
        text_tokenizer: Any = None,
        serializers: Mapping[str, Serializer] | None = None,
        random_crop: bool = True,
    ) -> None:
        self.registry = dict(registry)
        self.text_tokenizer = load_text_tokenizer(text_tokenizer)
        self.serializers = {**SERIALIZERS, **(serializers or {})}
        self.random_crop = random_crop
        for spec in self.registry.values():
            if spec.is_sequence and self.text_tokenizer is None:
                raise ValueError(f"modality {spec.name} is a sequence: the loader needs a text_tokenizer")

    def folders(self) -> list[str]:
        return [spec.folder for spec in self.registry.values()]

    @staticmethod
    def _value(payload: Any, folder: str, key: str, invalid: Mapping[str, set[str]]) -> Any:
        """Decoded member, or None for invalid records (zero bytes / listed in the ledger)."""
        if payload is None or key in invalid.get(folder, ()):
            return None
        ext, data = payload
        if ext == "parquet":
            return data if data not in (None, [], "") else None
        if len(data) == 0:
            return None
        if ext.endswith("npy"):
            return load_npy(data)
        return decode_member(ext, data)

    def __call__(self, key: str, members: Mapping[str, Any], invalid: Mapping[str, set[str]], rng: np.random.Generator):
        crop_rows = self._value(members.get(CROP_FOLDER), CROP_FOLDER, key, invalid)
        values = {name: self._value(members.get(spec.folder), spec.folder, key, invalid) for name, spec in self.registry.items()}
        if crop_rows is not None:
            crop_rows = np.asarray(crop_rows, dtype=np.int64).reshape(-1, 5)
            n_crops = len(crop_rows)
        else:  # no crop table: any row every token array has
            rows = [np.asarray(v).shape[0] for n, v in values.items() if v is not None and not self.registry[n].is_sequence]
            n_crops = min(rows) if rows else 1
        crop = int(rng.integers(n_crops)) if self.random_crop and n_crops > 1 else 0
        crop_row = crop_rows[crop] if crop_rows is not None else None
        sample: dict[str, np.ndarray | None] = {}
        for name, spec in self.registry.items():
            value = values[name]
            if value is None:
                sample[name] = None
            elif spec.is_sequence:
                sample[name] = self._tokenize(spec, value, crop, crop_row, rng)
            else:
                tokens = np.asarray(value)
                if tokens.ndim == 1:
                    tokens = tokens[None]
                if tokens.shape[0] <= crop:
                    raise ValueError(f"sample {key}: {spec.folder} has {tokens.shape[0]} crop rows, crop {crop} requested")
                row = tokens[crop].astype(np.int64)
                if row.shape[0] != spec.num_tokens:
                    raise ValueError(f"sample {key}: {spec.folder} has {row.shape[0]} tokens, registry says {spec.num_tokens}")
                sample[name] = row
        return sample

    def _tokenize(self, spec: ModalitySpec, value: Any, crop: int, crop_row, rng) -> np.ndarray | None:
        base = spec.folder.split("@")[0]
        serializer = self.serializers.get(base)
        if serializer is None:
            if not isinstance(value, str):
                raise ValueError(f"no serializer for sequence folder {spec.folder!r}; pass one in serializers=")
            text = value
        else:
            text = serializer(value, crop, crop_row, rng)
        if text is None:  # nothing usable; an empty string still means "[EOS]" (e.g. no boxes)
            return None
        ids = self.text_tokenizer.encode(text).ids[: spec.num_tokens - 1] + [EOS_ID]
        return np.asarray(ids, dtype=np.int64)


def collate(samples: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: torch.from_numpy(np.stack([s[name][k] for s in samples])) for k in samples[0][name]}
        for name in samples[0]
    }


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class TokenShardDataset(IterableDataset):
    """Batches of masked samples; see the module docstring for the stream layout.

    ``repeat=True`` streams forever (training); ``repeat=False`` makes one pass (eval).
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        decoder: SampleDecoder,
        masker: UnifiedMasker,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        repeat: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = True,
    ) -> None:
        if not sources:
            raise ValueError("the loader got no shards")
        self.sources = list(sources)
        self.decoder = decoder
        self.masker = masker
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.rank = rank
        self.world_size = world_size
        self.shuffle_shards = shuffle_shards
        self.batches_consumed = 0  # set by TokenLoader before workers start (resume)

    # -- which samples belong to a slot ---------------------------------------------------
    def _epoch_plan(self, epoch: int, slot: int, n_slots: int) -> tuple[list[ShardSource], int, int]:
        """(shards, stride, offset) of one slot in one epoch: keep samples i % stride == offset."""
        order = list(range(len(self.sources)))
        if self.shuffle_shards:
            order = list(_rng(self.seed, epoch, 0x5EED).permutation(len(self.sources)))
        shards = [self.sources[i] for i in order]
        if len(shards) >= n_slots:
            return shards[slot::n_slots], 1, 0
        return shards, n_slots, slot

    def _epoch_length(self, epoch: int, slot: int, n_slots: int) -> int:
        shards, stride, offset = self._epoch_plan(epoch, slot, n_slots)
        total = sum(shard_length(s) for s in shards)
        return len(range(offset, total, stride))

    def _raw_epoch(self, epoch: int, slot: int, n_slots: int) -> Iterator[tuple[str, dict, dict]]:
        shards, stride, offset = self._epoch_plan(epoch, slot, n_slots)
        ordinal = 0
        for source in shards:
            for key, members in iter_shard(source):
                if ordinal % stride == offset:
                    yield key, members, source.invalid
                ordinal += 1

    def _shuffled(self, items: Iterator, rng: np.random.Generator) -> Iterator:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        buffer: list = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            yield buffer[j]
            buffer[j] = item
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def slot_samples(self, slot: int, n_slots: int, skip: int = 0) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """Masked samples of one slot, starting after ``skip`` samples of its stream."""
        epoch, ordinal = 0, 0
        while self.repeat and skip > 0:  # skip whole epochs without reading them
            length = self._epoch_length(epoch, slot, n_slots)
            if length == 0:
                raise ValueError(f"slot {slot} of {n_slots} has no samples: use fewer workers or ranks")
            if skip < length:
                break
            skip -= length
            ordinal += length
            epoch += 1
        while True:
            produced = 0
            stream = self._shuffled(self._raw_epoch(epoch, slot, n_slots), _rng(self.seed, epoch, slot, 0xB0F))
            for key, members, invalid in stream:
                produced += 1
                if skip > 0:
                    skip -= 1
                    ordinal += 1
                    continue
                rng = _rng(self.seed, slot, ordinal, 0x3A5C)
                ordinal += 1
                yield self.masker(self.decoder(key, members, invalid, rng), rng)
            if not self.repeat:
                return
            if produced == 0:
                raise ValueError(f"slot {slot} of {n_slots} has no samples: use fewer workers or ranks")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        physical = info.id if info else 0
        # A fresh DataLoader iterator starts at worker 0; rotate so batch b of the whole run
        # always comes from logical worker b % n_workers.
        logical = (physical + self.batches_consumed) % n_workers
        done_by_me = max(0, (self.batches_consumed - logical + n_workers - 1) // n_workers)
        slot = self.rank * n_workers + logical
        n_slots = self.world_size * n_workers
        batch: list = []
        for sample in self.slot_samples(slot, n_slots, skip=done_by_me * self.batch_size):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)


class TokenLoader:
    """A DataLoader over TokenShardDataset whose position survives checkpoints."""

    def __init__(self, dataset: TokenShardDataset, num_workers: int = 0, prefetch_factor: int = 4) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.batches_consumed = 0

    def __iter__(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        self.dataset.batches_consumed = self.batches_consumed
        kwargs: dict[str, Any] = {"batch_size": None, "num_workers": self.num_workers}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
            kwargs["persistent_workers"] = False
        for batch in DataLoader(self.dataset, **kwargs):
            self.batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {
            "batches_consumed": self.batches_consumed,
            "num_workers": self.num_workers,
            "batch_size": self.dataset.batch_size,
            "world_size": self.dataset.world_size,
            "seed": self.dataset.seed,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        expected = {
            "num_workers": self.num_workers,
            "batch_size": self.dataset.batch_size,
            "world_size": self.dataset.world_size,
            "seed": self.dataset.seed,
        }
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            raise ValueError(f"cannot resume the loader exactly: settings changed since the checkpoint {changed}")
        self.batches_consumed = int(state["batches_consumed"])


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
                tokens = load_npy(data)
                return int(tokens.reshape(tokens.shape[0], -1).shape[1]) if tokens.ndim > 1 else int(tokens.shape[0])
    return None


def unigram_counts(
    sources: Sequence[ShardSource], decoder: SampleDecoder, max_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Token-id counts per modality: every crop row of token modalities, the tokenized text
    (EOS included) of sequences."""
    counts: dict[str, np.ndarray] = {n: np.zeros(s.vocab_size, dtype=np.int64) for n, s in decoder.registry.items()}
    rng = np.random.default_rng(0)
    seen = 0
    folders = decoder.folders() + ([CROP_FOLDER] if CROP_FOLDER in sources[0].urls else [])
    for source in sources:
        sub = ShardSource(source.index, {f: source.urls[f] for f in folders if f in source.urls}, source.invalid, kind=source.kind)
        for key, members in iter_shard(sub):
            for name, spec in decoder.registry.items():
                value = decoder._value(members.get(spec.folder), spec.folder, key, source.invalid)
                if value is None:
                    continue
                if spec.is_sequence:
                    ids = decoder._tokenize(spec, value, 0, None, rng)
                    if ids is None:
                        continue
                else:
                    ids = np.asarray(value, dtype=np.int64).ravel()
                counts[name] += np.bincount(ids, minlength=spec.vocab_size)[: spec.vocab_size]
            seen += 1
            if max_samples and seen >= max_samples:
                return counts
    return counts


def entropy_of_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of the frequency distribution ``counts``."""
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one token's -0.0 reads as 0.0


def cross_entropy_of_counts(eval_counts: np.ndarray, train_counts: np.ndarray, smoothing: float = 1.0) -> float:
    """Mean -log p_train(token) over ``eval_counts``, with add-``smoothing`` p_train: what
    predicting the training unigram costs on other data (ids unseen in training included)."""
    p = (train_counts + smoothing) / (train_counts.sum() + smoothing * len(train_counts))
    return float(-(eval_counts * np.log(p)).sum() / max(eval_counts.sum(), 1))


def unigram_entropy(
    sources: Sequence[ShardSource], decoder: SampleDecoder, max_samples: int | None = None
) -> dict[str, float]:
    """Entropy (nats) of each modality's token-id frequency distribution in ``sources``:
    the loss of a model that ignores its inputs and predicts the marginal distribution."""
    return {name: entropy_of_counts(c) for name, c in unigram_counts(sources, decoder, max_samples).items()}
