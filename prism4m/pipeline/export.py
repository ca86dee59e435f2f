"""The export stage: a dataset root as Parquet, one row per sample, one part per shard.

``ROOT/_export/parquet/part-%06d.parquet`` (or ``out``): key, shard, crop_settings, one
column per current token folder and one text column per sequence folder; ``_export.json``
written last describes the export (DATASET.md, "Parquet export").

``export_ml4m_sam``: the ``sam_instance@224`` token folder in ml-4m's own layout, pickled
object arrays (``ROOT/_export/ml4m/sam_instance/shard-%06d.tar``; DATASET.md, "ml-4m's SAM
instance layout").
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
from prism4m.contract.store import DatasetStore, Member, build_tar, content_hash, now_iso, shard_name
from prism4m.modality.instances import read_member
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
    mask = pa.array([not v for v in valid], pa.bool_())  # typed: an empty shard has no values to infer from
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


ML4M_DIR = "_export/ml4m"
#: ml-4m's modality key for SAM instance tokens: the folder its data_path names
ML4M_SAM_FOLDER = "sam_instance"
SAM_TOKEN_PREFIX = "sam_instance@"


def ml4m_sam_npy(data: bytes) -> bytes:
    """One ``sam_instance@<res>/KEY.json`` token member → ml-4m's ``sam_instance/KEY.npy``: a
    pickled numpy object array indexed by crop, each entry ``{"points": [[contour (k,1,2) int32]
    per instance], "token_ids": (n,16) int32, "bbox": (n,4) int32 [ymin,xmin,ymax,xmax]}``
    (what ``SAMInstanceTokTransform`` loads with ``np.load(allow_pickle=True)``). Zero bytes (an
    invalid record) stay zero bytes."""
    import io

    if not data:
        return b""
    crops = read_member(data)
    arr = np.empty(len(crops), dtype=object)
    for i, crop in enumerate(crops):
        arr[i] = {"points": crop["points"], "token_ids": crop["token_ids"], "bbox": crop["bbox"]}
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def sam_token_folder(store: DatasetStore, folder: str | None = None) -> str:
    """The current SAM instance token folder to export: ``folder``, else ``sam_instance@224``
    (ml-4m's resolution), else the only ``sam_instance@<res>`` of the root."""
    found = [f for f in store.ledger_folders() if f.startswith(SAM_TOKEN_PREFIX) and VERSION_SEP not in f]
    if folder is not None:
        if folder not in found:
            raise ValueError(f"{store.url}: no committed token folder {folder!r} (have: {', '.join(found) or 'none'})")
        return folder
    if f"{SAM_TOKEN_PREFIX}224" in found:
        return f"{SAM_TOKEN_PREFIX}224"
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{store.url}: no sam_instance token folder; run `prism4m tokenize ROOT -t DIR` with a "
                         "sam_instance mask tokenizer first (DATASET.md, SAM instance tokens)")
    raise ValueError(f"{store.url}: several sam_instance token folders ({', '.join(found)}); name one")


def export_ml4m_sam(root: str, out: str | None = None, *, folder: str | None = None,
                    storage_options: dict | None = None) -> dict:
    """Write ``OUT/sam_instance/shard-%06d.tar`` (default OUT: ``ROOT/_export/ml4m``) from the
    root's SAM instance token folder: same shard names, same keys in rgb's order, one
    ``KEY.npy`` per sample in ml-4m's pickled layout (``ml4m_sam_npy``). ``OUT/_export.json``
    (written last) names the source folder, the parts with the ledger content hashes they were
    built from, and whether they came from random weights."""
    store = DatasetStore(root, storage_options)
    src = sam_token_folder(store, folder)
    ledger = store.ledger(src)
    rgb = store.ledger("rgb")
    shards = sorted(set(ledger) & set(rgb))
    if not shards:
        raise ValueError(f"{store.url}: {src} has no committed shard")
    if out is None:
        out_fs, out_path = store.fs, store.p(ML4M_DIR)
    else:
        out_fs, out_path = fsspec.core.url_to_fs(out, **(storage_options or {}))
    tar_dir = posixpath.join(out_path, ML4M_SAM_FOLDER)
    out_fs.makedirs(tar_dir, exist_ok=True)
    parts, rows, invalid = {}, 0, 0
    for index in shards:
        keys = [m.key for m in store.iter_shard("rgb", index)]
        members = store.read_shard(src, index)
        if [m.key for m in members] != keys:
            raise ValueError(f"{store.url}: {src}/shard {index} keys differ from rgb (misaligned)")
        converted = [Member(m.key, "npy", ml4m_sam_npy(m.data)) for m in members]
        name = shard_name(index)
        tmp = posixpath.join(tar_dir, "." + name + ".tmp")
        out_fs.pipe_file(tmp, build_tar(converted))
        out_fs.mv(tmp, posixpath.join(tar_dir, name))
        n_invalid = sum(1 for m in converted if not m.data)
        parts[name] = {"shard": index, "rows": len(keys), "invalid": n_invalid,
                       "sources": {"rgb": content_hash(rgb[index]), src: content_hash(ledger[index])},
                       "random_weights": bool(ledger[index].get("random_weights"))}
        rows += len(keys)
        invalid += n_invalid
    summary = {"format": "ml4m-sam/1", "root": store.url, "source_folder": src, "folder": ML4M_SAM_FOLDER,
               "out": out_fs.unstrip_protocol(tar_dir).removeprefix("file://"), "rows": rows, "invalid": invalid,
               "columns": [ML4M_SAM_FOLDER], "parts": parts, "folders": {src: summarize_folder(ledger)},
               "exported_at": now_iso()}
    out_fs.pipe_file(posixpath.join(out_path, EXPORT_SUMMARY), json.dumps(summary, indent=2).encode())
    return summary
