"""The export stage: a dataset root as Parquet, one row per sample, one part per shard.

``ROOT/_export/parquet/part-%06d.parquet`` (or ``out``): key, shard, crop_settings, one
column per current token folder and one text column per sequence folder; ``_export.json``
written last describes the export (DATASET.md, "Parquet export").
"""

from __future__ import annotations

import json
import posixpath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prism4m.contract.manifest import summarize_folder
from prism4m.contract.members import decode_npy
from prism4m.contract.modalities import VERSION_SEP
from prism4m.contract.store import DatasetStore, content_hash, now_iso
from prism4m.modality.serializers import SEQUENCE_LABEL_FOLDERS, token_sequence_folders

EXPORT_DIR = "_export/parquet"
#: the summary written last into the export directory (parts, sources, folders)
EXPORT_SUMMARY = "_export.json"
#: field metadata key of a text column: the extension of the members it holds
EXT_METADATA_KEY = b"prism4m.ext"


def _nested_ints(arrays: list[np.ndarray | None], dtype: pa.DataType, np_dtype) -> pa.Array:
    """list<list<dtype>> from 2-D arrays (None → null row), built from offsets, not Python lists."""
    outer = [0]
    inner = [0]
    flat = []
    valid = []
    for a in arrays:
        if a is None:
            outer.append(outer[-1])
            valid.append(False)
            continue
        a = np.asarray(a).reshape(len(a), -1)
        for row in a:
            inner.append(inner[-1] + len(row))
        flat.append(a.astype(np_dtype).reshape(-1))
        outer.append(outer[-1] + len(a))
        valid.append(True)
    values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np_dtype), type=dtype)
    inner_arr = pa.ListArray.from_arrays(pa.array(inner, pa.int32()), values)
    mask = pa.array([not v for v in valid])
    return pa.ListArray.from_arrays(pa.array(outer, pa.int32()), inner_arr, mask=mask)


def _npy(data: bytes) -> np.ndarray | None:
    return None if not data else decode_npy(data)


def _text(data: bytes) -> str | None:
    return data.decode("utf-8") if data else None


def _member_ext(store: DatasetStore, folder: str, records: dict[int, dict]) -> str:
    """The extension of ``folder``'s members (first committed shard's first valid member)."""
    for index in sorted(records):
        for m in store.iter_shard(folder, index):
            if m.data:
                return m.ext
    return "txt"  # nothing committed: the column is all null, its extension never read


def export_parquet(root: str, out: str | None = None, *, storage_options: dict | None = None) -> dict:
    """Write the Parquet export; returns the summary written to ``_export.json``."""
    store = DatasetStore(root, storage_options)
    rgb = store.ledger("rgb")
    crops = store.ledger("crop_settings")
    shards = sorted(set(rgb) & set(crops))
    if not shards:
        raise ValueError(f"{store.url}: no shard with committed rgb and crop_settings")
    folders = store.ledger_folders()
    tok_folders = [f for f in folders if f.startswith("tok_") and VERSION_SEP not in f]
    seq_folders = [f for f in SEQUENCE_LABEL_FOLDERS if f in folders] + token_sequence_folders(folders)
    ledgers = {f: store.ledger(f) for f in tok_folders + seq_folders}
    exts = {f: _member_ext(store, f, ledgers[f]) for f in seq_folders}
    if out is None:
        out_fs, out_path = store.fs, store.p(EXPORT_DIR)
    else:
        out_fs, out_path = fsspec.core.url_to_fs(out, **(storage_options or {}))
    out_fs.makedirs(out_path, exist_ok=True)
    schema = pa.schema([("key", pa.string()), ("shard", pa.int32()), ("crop_settings", pa.list_(pa.list_(pa.int64())))]
                       + [(f, pa.list_(pa.list_(pa.int16()))) for f in tok_folders]
                       + [pa.field(f, pa.string(), metadata={EXT_METADATA_KEY: exts[f].encode()})
                          for f in seq_folders])
    parts = {}
    rows = 0
    for index in shards:
        keys = [m.key for m in store.iter_shard("rgb", index)]
        cols: dict[str, pa.Array] = {
            "key": pa.array(keys, pa.string()),
            "shard": pa.array(np.full(len(keys), index, np.int32)),
            "crop_settings": _nested_ints([_npy(m.data) for m in store.iter_shard("crop_settings", index)],
                                          pa.int64(), np.int64),
        }
        sources = {"rgb": content_hash(rgb[index]), "crop_settings": content_hash(crops[index])}
        for f in tok_folders + seq_folders:
            rec = ledgers[f].get(index)
            members = store.read_shard(f, index) if rec else []
            if members and [m.key for m in members] != keys:
                raise ValueError(f"{store.url}: {f}/shard {index} keys differ from rgb (misaligned)")
            sources[f] = content_hash(rec)
            if f in tok_folders:
                cols[f] = _nested_ints([_npy(m.data) for m in members] if members else [None] * len(keys),
                                       pa.int16(), np.int16)
            else:
                cols[f] = pa.array([_text(m.data) for m in members] if members else [None] * len(keys),
                                   pa.string())
        table = pa.Table.from_arrays([cols[name] for name in schema.names], schema=schema)
        name = f"part-{index:06d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        tmp = posixpath.join(out_path, "." + name + ".tmp")
        out_fs.pipe_file(tmp, buf.getvalue().to_pybytes())
        out_fs.mv(tmp, posixpath.join(out_path, name))
        parts[name] = {"shard": index, "rows": len(keys), "sources": sources,
                       "random_weights": [f for f in tok_folders + seq_folders
                                          if (ledgers[f].get(index) or {}).get("random_weights")]}
        rows += len(keys)
    summary = {"format": "prism4m-parquet/1", "root": store.url, "rows": rows, "columns": schema.names,
               "parts": parts, "folders": {f: summarize_folder(ledgers[f]) for f in tok_folders + seq_folders},
               "exported_at": now_iso()}
    out_fs.pipe_file(posixpath.join(out_path, EXPORT_SUMMARY), json.dumps(summary, indent=2).encode())
    return summary
