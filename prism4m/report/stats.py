"""Per-modality statistics: coverage from the ledger, value distributions from sampled members.

Coverage is exact and cheap (ledger records: n_samples and the invalid keys). Distributions
need the members themselves, so they are computed on a bounded sample (a few evenly spaced
shards, at most `max_members` members) — the report says how many members each is based on.
What a member contributes is decided by one small function per modality in `VALUES`
(numbers for a histogram, or category names for a bar chart; other folders: member sizes);
token folders add codebook usage instead.
"""

from __future__ import annotations

import colorsys
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from statistics import median
from typing import Callable

import numpy as np
from PIL import Image

from prism4m.contract.members import decode_npy
from prism4m.contract.store import DatasetStore
from prism4m.modality.token_stats import codebook_usage


@dataclass
class Chart:
    title: str
    labels: list[str]
    counts: list[int]


@dataclass
class FolderStats:
    folder: str
    shards: int
    samples: int            # members in committed shards
    invalid: int
    dataset_samples: int    # samples in rgb/ (the whole dataset)
    sampled: int = 0        # members read for the charts
    charts: list[Chart] = field(default_factory=list)
    codebook: dict | None = None
    table_title: str = ""
    table: dict[str, str] = field(default_factory=dict)   # per-field summaries (metadata)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return self.samples - self.invalid

    @property
    def coverage(self) -> float:
        return self.valid / self.dataset_samples if self.dataset_samples else 0.0


def _img(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# Each returns ("num", [floats], (lo, hi), title) or ("cat", [names], None, title).
def _rgb(d):
    a = _img(d).astype(np.float32)
    lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if a.ndim == 3 else a
    return "num", lum[::4, ::4].ravel().tolist(), (0, 255), "luminance of pixels"


def _depth(d):
    return "num", (_img(d)[::4, ::4].astype(np.float64).ravel() / 65535).tolist(), (0, 1), "depth / 65535"


def _edges(d):
    return "num", [float((_img(d) > 127).mean())], (0, 1), "edge pixel share per image"


def _normal(d):
    a = _img(d)
    return "num", a[::4, ::4, 2].astype(np.float64).ravel().tolist(), (0, 255), "normal z (B channel)"


def _semseg(d):
    ids = _img(d)[::4, ::4].ravel()
    from prism4m.report.colors import coco_panoptic_names

    names = coco_panoptic_names()
    return "cat", [("no class" if i == 255 else names[i] if i < len(names) else str(i)) for i in ids.tolist()], \
        None, "pixels by class (subsampled 1/16)"


def _det(d):
    return "cat", [x.get("class_name", "?") for x in json.loads(d).get("instances", [])], None, "boxes by class"


def _sam(d):
    rec = json.loads(d)
    if "crops" in rec:  # sam_instance@<size> tokens: count crop 0's instances
        return "num", [len(rec["crops"][0]["bbox"]) if rec["crops"] else 0], None, "instances per crop"
    return "num", [len(rec.get("instances", []))], None, "instances per image"


def _poses(d):
    return "num", [len(json.loads(d).get("persons", []))], None, "persons per image"


def _caption(d):
    return "num", [len(d.decode("utf-8", "replace").split())], None, "words per caption"


def _palette(d):
    val = json.loads(d)
    pal = val[0] if isinstance(val, list) else val
    r, g, b = pal["1"][0]
    return "num", [colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360], (0, 360), "hue of the dominant colour (°)"


def _metadata(d):
    return "tab", list(json.loads(d).items()), None, "fields (min / median / max)"


def _crops(d):
    rows = decode_npy(d)
    base = rows[0, 2] * rows[0, 3]
    return "num", [float(h * w / base) for h, w in rows[1:, 2:4]], (0, 1), "random crop area / centre square area"


def _features(d):
    a = decode_npy(d).astype(np.float64)
    return "num", [float(np.linalg.norm(a[0]))], None, "‖global embedding‖"


def _bytes(d):
    return "num", [len(d)], None, "member size (bytes)"


VALUES: dict[str, Callable[[bytes], tuple]] = {
    "rgb": _rgb, "depth": _depth, "canny_edge": _edges, "sam_edge": _edges, "normal": _normal,
    "semseg_coco": _semseg, "det": _det, "sam_instance": _sam, "human_poses": _poses,
    "caption": _caption, "color_palette": _palette, "metadata": _metadata, "clip": _features,
    "dinov2": _features, "imagebind": _features, "crop_settings": _crops,
}

# Modalities of the table whose statistics are their member sizes, on purpose.
GENERIC_FOLDERS = ("source", "t5_caption")


def histogram(values: list[float], rng: tuple | None, bins: int = 24) -> Chart:
    v = np.asarray(values, dtype=np.float64)
    if rng is None:
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        if float(lo).is_integer() and float(hi).is_integer() and hi - lo < bins:  # small integers: one bar each
            edges = np.arange(lo, hi + 2) - 0.5
        else:
            edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    else:
        edges = np.linspace(rng[0], rng[1], bins + 1)
    counts, edges = np.histogram(v, bins=edges)
    labels = [f"{(a + b) / 2:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    return Chart("", labels, counts.tolist())


def categories(names: list[str], top: int = 15) -> Chart:
    common = Counter(names).most_common(top)
    return Chart("", [n for n, _ in common], [c for _, c in common])


def _spread(indices: list[int], k: int) -> list[int]:
    """Up to k indices spread evenly over the list (first and last included)."""
    if len(indices) <= k:
        return indices
    return [indices[round(i * (len(indices) - 1) / (k - 1))] for i in range(k)] if k > 1 else indices[:1]


def folder_stats(store: DatasetStore, folder: str, records: dict[int, dict], dataset_samples: int,
                 max_shards: int = 4, max_members: int = 512) -> FolderStats:
    st = FolderStats(folder, len(records), sum(r.get("n_samples", 0) for r in records.values()),
                     sum(len(r.get("invalid", [])) for r in records.values()), dataset_samples)
    base = folder.split("~")[0]
    is_tok = base.startswith("tok_")
    fn = VALUES.get(base) or VALUES.get(base.split("@")[0]) or (None if is_tok else _bytes)
    kind, rng, title, values = None, None, "", []
    tok_ids = []
    chosen = _spread(sorted(records), max_shards)
    per_shard = max(1, max_members // max(len(chosen), 1))  # spread the sample over the chosen shards
    for shard in chosen:
        taken = 0
        for m in store.iter_shard(folder, shard, record=records[shard]):
            if taken >= per_shard:
                break
            taken += 1
            if m.is_invalid:
                continue
            st.sampled += 1
            try:
                if is_tok:
                    tok_ids.append(decode_npy(m.data).ravel())
                    continue
                kind, vals, rng, title = fn(m.data)
                values.extend(vals)
            except Exception as exc:  # one bad member must not hide the folder's statistics
                st.notes.append(f"{m.key}: {type(exc).__name__}: {str(exc)[:120]}")
    if is_tok and tok_ids:
        producer = next(iter(records.values())).get("producer", {})
        st.codebook = codebook_usage(np.concatenate(tok_ids), producer.get("vocab_size"))
        ids = np.concatenate(tok_ids)
        ch = histogram(ids.tolist(), (0, producer.get("vocab_size") or int(ids.max()) + 1), bins=32)
        ch.title = "token ids (32 ranges of the vocabulary)"
        st.charts.append(ch)
    elif values and kind == "tab":
        by_field: dict[str, list[float]] = {}
        for k, v in values:
            by_field.setdefault(k, []).append(float(v))
        st.table = {k: f"{min(v):.4g} / {median(v):.4g} / {max(v):.4g}  (n={len(v)})" for k, v in sorted(by_field.items())}
        st.table_title = title
    elif values:
        ch = categories(values) if kind == "cat" else histogram(values, rng)
        ch.title = title
        st.charts.append(ch)
    return st
