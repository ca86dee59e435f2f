"""One shard of a modality with what cropping needs: crop rows and the rgb image size.

The rgb, crop_settings and label shards of one index are zipped by position and must have
the same keys (DATASET.md invariant 1); a divergence is an error, never silently skipped.
Invalid label records (zero bytes) come back as ``value=None``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image

from prism4m.contract.members import decode_npy
from prism4m.contract.store import DatasetStore
from prism4m.modality.specs import TokenSpec, decode_value


@dataclass
class SampleInput:
    key: str
    value: Any                   # decoded label (specs.decode_value), None for an invalid record
    rows: np.ndarray             # (n_crops, 5) int64
    image_hw: tuple[int, int]    # rgb/ size the rows refer to
    error: str | None = None     # why value is None
    region: tuple[int, int, int, int] | None = None  # what a feature map covers (None: centre square)


def rgb_hw(data: bytes) -> tuple[int, int]:
    """(h, w) of an rgb/ member, from its header."""
    w, h = Image.open(io.BytesIO(data)).size  # header only; no pixel decode
    return h, w


def iter_shard_inputs(store: DatasetStore, spec: TokenSpec, index: int,
                      cache: dict[str, list] | None = None) -> Iterator[SampleInput]:
    """Samples of shard ``index``; ``cache`` (folder → members) shares reads across tokenizers."""
    cache = {} if cache is None else cache
    for folder in ("rgb", "crop_settings", spec.folder):
        if folder not in cache:
            cache[folder] = store.read_shard(folder, index)
    rgb, crops, labels = cache["rgb"], cache["crop_settings"], cache[spec.folder]
    whole_image = False
    if spec.ext == "npy":  # clip's fit: resize encodes the whole (stretched) image
        rec = store.record(spec.folder, index) or {}
        whole_image = (rec.get("producer", {}).get("config") or {}).get("fit") == "resize"
    if not (len(rgb) == len(crops) == len(labels)):
        raise ValueError(f"shard {index}: rgb/crop_settings/{spec.folder} have {len(rgb)}/{len(crops)}/"
                         f"{len(labels)} members (misaligned dataset)")
    for r, c, m in zip(rgb, crops, labels):
        if not (r.key == c.key == m.key):
            raise ValueError(f"shard {index}: key divergence rgb={r.key} crop_settings={c.key} {spec.folder}={m.key}")
        rows = decode_npy(c.data).reshape(-1, 5).astype(np.int64)
        if m.is_invalid or r.is_invalid:
            yield SampleInput(m.key, None, rows, (0, 0), "invalid_label")
            continue
        try:
            value = decode_value(spec, m.data)
            hw = value.shape[:2] if spec.kind in ("image", "classes") else rgb_hw(r.data)
            if spec.kind == "instances" and tuple(value.shape) != tuple(hw):
                raise ValueError(f"masks are {value.shape[0]}x{value.shape[1]}, rgb is {hw[0]}x{hw[1]}")
        except Exception as exc:  # noqa: BLE001 - one bad member must not sink the shard
            yield SampleInput(m.key, None, rows, (0, 0), f"decode_error: {exc}")
            continue
        hw = (int(hw[0]), int(hw[1]))
        yield SampleInput(m.key, value, rows, hw, region=(0, 0, *hw) if whole_image else None)
