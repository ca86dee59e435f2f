"""SAM instances as 4M-21 tokenizes them: per crop, each instance's box and a 64×64 mask.

The ``sam_instance`` label (DATASET.md) holds one COCO RLE per instance at the rgb
resolution. For every crop_settings row each instance mask is cut exactly like the rgb
image (rasters.crop_raster: crop → resize to the crop side, bilinear, kept where ≥ 0.5 →
optional flip). An instance that leaves the crop, or keeps fewer than ``min_area`` pixels
of it, is dropped. A survivor gets:

- ``bbox``: ml-4m's ``[ymin, xmin, ymax, xmax]`` in crop pixels, max exclusive (ml-4m's
  decoder pastes the mask into ``[ymin:ymax, xmin:xmax]``);
- a ``mask_size``² binary mask: the box's contents resized (bilinear, ≥ 0.5), the input of
  the mask tokenizer (tokenizers.mask.MaskTokenizer, a VQ-VAE: 16 tokens per instance);
- ``points``: its largest outer contour as ``[x, y]`` crop pixels (cv2, simplified to 1 px),
  which ml-4m's sequence uses to answer "which instances contain this point"
  (serializers.serialize_sam_instance).

The token member is one ``KEY.json`` per sample (``member_bytes``; layout in DATASET.md)
instead of ml-4m's pickled object array (no pickle on read); ``read_member`` turns it back
into ml-4m's in-memory layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from prism4m.contract.members import encode_json
from prism4m.modality.rasters import crop_raster

#: side of the mask fed to the tokenizer (ml-4m's sam_mask tokenizer: 64, patch 16 → 4×4 tokens)
MASK_SIZE = 64
#: an instance with fewer crop pixels than this is too small to be worth 20 tokens
MIN_AREA = 9
#: contour simplification tolerance in crop pixels
CONTOUR_EPSILON = 1.0
MEMBER_FORMAT = "prism4m-sam-instance-tokens/1"


@dataclass(frozen=True)
class InstanceLabel:
    """A decoded sam_instance member: image size and one COCO RLE per instance."""

    height: int
    width: int
    rles: list[dict]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def mask(self, i: int) -> np.ndarray:
        """Instance ``i`` as an H×W uint8 0/1 mask."""
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.rles[i])


def decode_label(data: bytes) -> InstanceLabel:
    """sam_instance KEY.json → InstanceLabel; a malformed record raises ValueError."""
    rec = json.loads(data)
    try:
        h, w = int(rec["height"]), int(rec["width"])
        rles = []
        for i, inst in enumerate(rec["instances"]):
            seg = inst["segmentation"]
            if [int(v) for v in seg["size"]] != [h, w]:
                raise ValueError(f"instance {i} has mask size {seg['size']}, the record says {[h, w]}")
            counts = seg["counts"]  # pycocotools wants bytes; our JSON stores str
            rles.append({"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts})
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a sam_instance record (DATASET.md): missing or malformed {exc}") from exc
    return InstanceLabel(h, w, rles)


@dataclass
class CropInstances:
    """One sample's instances, crop by crop; the per-instance arrays are in crop order."""

    rows: np.ndarray            # (n_crops, 5) the crop_settings rows
    counts: list[int]           # instances kept in each crop
    masks: np.ndarray           # (Σ counts, 1, m, m) uint8 0/1, the tokenizer's input
    bboxes: np.ndarray          # (Σ counts, 4) int64 [ymin, xmin, ymax, xmax], crop pixels
    contours: list[np.ndarray]  # Σ counts arrays (n_points, 2) int64 [x, y], crop pixels


def _resize_binary(mask: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
    return (np.asarray(img) >= 128).astype(np.uint8)


def _outer_contour(mask: np.ndarray) -> np.ndarray:
    import cv2

    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    largest = max(found, key=lambda c: (cv2.contourArea(c), len(c)))
    return cv2.approxPolyDP(largest, CONTOUR_EPSILON, True).reshape(-1, 2).astype(np.int64)


def _meets_crop(box_xywh: np.ndarray, row) -> bool:
    x, y, w, h = box_xywh
    top, left, ch, cw = (int(v) for v in row[:4])
    return x < left + cw and x + w > left and y < top + ch and y + h > top


def crop_instances(label: InstanceLabel, rows: np.ndarray, crop_size: int, mask_size: int = MASK_SIZE,
                   min_area: int = MIN_AREA) -> CropInstances:
    """Every instance of ``label`` in every crop row (see module docstring)."""
    from pycocotools import mask as mask_utils

    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    per_crop: list[list[tuple[np.ndarray, list[int], np.ndarray]]] = [[] for _ in rows]
    boxes = mask_utils.toBbox(label.rles) if label.rles else np.zeros((0, 4))
    for i in range(len(label.rles)):
        full = None  # decoded once, only if some crop meets the instance's box
        for c, row in enumerate(rows):
            if not _meets_crop(boxes[i], row):
                continue
            if full is None:
                full = np.ascontiguousarray(label.mask(i)) * np.uint8(255)
            crop = crop_raster(full, row, crop_size, "bilinear")[0] >= 128
            if int(crop.sum()) < min_area:
                continue
            ys, xs = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
            ymin, ymax, xmin, xmax = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            per_crop[c].append((_resize_binary(crop[ymin:ymax, xmin:xmax], mask_size),
                                [ymin, xmin, ymax, xmax], _outer_contour(crop)))
    kept = [inst for crop in per_crop for inst in crop]
    return CropInstances(
        rows=rows, counts=[len(crop) for crop in per_crop],
        masks=np.stack([m for m, _, _ in kept])[:, None] if kept else np.zeros((0, 1, mask_size, mask_size), np.uint8),
        bboxes=np.asarray([b for _, b, _ in kept], dtype=np.int64).reshape(-1, 4),
        contours=[p for _, _, p in kept])


# ---------------------------------------------------------------------------------- member
def member_bytes(inst: CropInstances, tokens: np.ndarray, crop_size: int, tokens_per_instance: int) -> bytes:
    """KEY.json: per crop its row, and per kept instance its bbox, token ids and contour."""
    tokens = np.asarray(tokens)
    if len(tokens) != len(inst.bboxes):
        raise ValueError(f"{len(tokens)} token rows for {len(inst.bboxes)} instances")
    crops, at = [], 0
    for row, n in zip(inst.rows, inst.counts):
        crops.append({"crop": [int(v) for v in row],
                      "bbox": inst.bboxes[at:at + n].tolist(),
                      "token_ids": tokens[at:at + n].astype(np.int64).tolist(),
                      "points": [p.tolist() for p in inst.contours[at:at + n]]})
        at += n
    doc = {"format": MEMBER_FORMAT, "crop_size": int(crop_size), "tokens_per_instance": int(tokens_per_instance),
           "crops": crops}
    return encode_json(doc)


def read_member(data: bytes) -> list[dict[str, Any]]:
    """KEY.json → ml-4m's layout: per crop ``{"token_ids": (n,16) int32, "bbox": (n,4) int32
    [ymin,xmin,ymax,xmax], "points": [[contour (k,1,2) int32] per instance], "crop": row}``."""
    doc = json.loads(data)
    if doc.get("format") != MEMBER_FORMAT:
        raise ValueError(f"not a sam_instance token member (format {doc.get('format')!r})")
    out = []
    for crop in doc["crops"]:
        n = len(crop["bbox"])
        out.append({"crop": np.asarray(crop["crop"], dtype=np.int64),
                    "token_ids": np.asarray(crop["token_ids"], dtype=np.int32).reshape(n, doc["tokens_per_instance"]),
                    "bbox": np.asarray(crop["bbox"], dtype=np.int32).reshape(n, 4),
                    "points": [[np.asarray(p, dtype=np.int32).reshape(-1, 1, 2)] for p in crop["points"]]})
    return out
