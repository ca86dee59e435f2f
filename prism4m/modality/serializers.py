"""Sequence modalities as the text ml-4m feeds its WordPiece tokenizer (4M_FORMAT.md §4.2, §7).

Each serializer takes the decoded member plus an optional crop row ``(top, left, h, w,
hflip)``, the rgb image size ``(H, W)`` and a numpy Generator for ml-4m's random choices
(palette size, group order, metadata chunk order); without a generator the choice is the
deterministic one (largest palette, fixed order). Coordinates use ``coord_bins`` = 1000,
i.e. ``round(x * 999)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prism4m.contract.modalities import VERSION_SEP
from prism4m.labelers.metadata_fields import DET_MIN_SCORE  # the detections metadata counts, too

COORD_MAX = 999

#: 4M-21 metadata fields: name → (v1 id, binning); "div32" and "int" clamp to 0..999,
#: (lo, hi) makes 50 bins, a list gives manual bin edges.
METADATA_FIELDS: dict[str, tuple[int, Any]] = {
    "original_width": (0, "div32"), "original_height": (1, "div32"),
    "caption_n_chars": (2, "int"), "caption_n_words": (3, "int"), "caption_n_sentences": (4, "int"),
    "n_humans": (5, "int"), "n_sam_instances": (6, "int"), "n_coco_instances": (7, "int"),
    "coco_instance_diversity": (8, "int"), "colorfulness": (9, (0, 150)), "brightness": (10, (0, 255)),
    "contrast": (11, (0, 127)), "saturation": (12, (0, 255)), "entropy": (13, (0, 10)),
    "walkability": (14, (0, 1)), "objectness": (15, (0, 1)), "semantic_diversity": (16, "int"),
    "geometric_complexity": (17, (0, 0.75)), "occlusion_score": (18, (0, 0.25)),
    "watermark_score": (19, [0.5]), "aesthetic_score": (20, [4.5, 5.5]),
}


def _q(x: float) -> int:
    return int(round(min(max(x, 0.0), 1.0) * COORD_MAX))


def _crop_box(box, crop_row, image_hw):
    """Full-image normalised xyxy → crop-normalised xyxy (None when outside the crop)."""
    x0, y0, x1, y1 = box
    if crop_row is None or image_hw is None:
        return box
    top, left, h, w, hflip = (float(v) for v in crop_row)
    H, W = image_hw
    x0, x1 = (np.clip([x0 * W, x1 * W], left, left + w) - left) / w
    y0, y1 = (np.clip([y0 * H, y1 * H], top, top + h) - top) / h
    if x1 <= x0 or y1 <= y0:
        return None
    if hflip:
        x0, x1 = 1.0 - x1, 1.0 - x0
    return float(x0), float(y0), float(x1), float(y1)


def serialize_det(value: dict, crop_row=None, image_hw=None, rng=None) -> str:
    """``v0=x0 v1=y0 v2=x1 v3=y1 class`` per box with score ≥ 0.6, nearest the origin first."""
    boxes = []
    for inst in value.get("instances", []):
        if float(inst.get("score", 1.0)) < DET_MIN_SCORE:
            continue
        box = _crop_box([float(v) for v in inst["boxes"]], crop_row, image_hw)
        if box is not None:
            boxes.append((box, inst["class_name"]))
    boxes.sort(key=lambda b: b[0][0] ** 2 + b[0][1] ** 2)
    return " ".join(f"v0={_q(x0)} v1={_q(y0)} v2={_q(x1)} v3={_q(y1)} {name}"
                    for (x0, y0, x1, y1), name in boxes)


def serialize_color_palette(value, crop_row=None, image_hw=None, rng=None) -> str:
    """``v1=k`` then every colour's channels as ``v0=c``; k random in 1..7 (largest without rng)."""
    palettes = value[0] if isinstance(value, list) else value
    sizes = sorted(int(k) for k in palettes)
    k = sizes[int(rng.integers(len(sizes)))] if rng is not None else sizes[-1]
    flat = [int(c) for rgb in palettes[str(k)] for c in rgb]
    return " ".join([f"v1={round(len(flat) / 3)}"] + [f"v0={c}" for c in flat])


def metadata_bin(value: float, binning: Any) -> int:
    if binning == "div32":
        return int(min(max(value // 32, 0), 999))
    if binning == "int":
        return int(min(max(round(value), 0), 999))
    if isinstance(binning, list):
        return int(np.searchsorted(binning, value, side="right"))
    lo, hi = binning
    return int((min(max(value, lo), hi) - lo) / (hi - lo) * 49)


def serialize_metadata(value: dict, crop_row=None, image_hw=None, rng=None) -> str:
    """``v1=<field id> v0=<bin>`` per known field; chunks shuffled with ``rng``."""
    unknown = sorted(set(value) - set(METADATA_FIELDS))
    if unknown:
        raise KeyError(f"unknown metadata fields {unknown} (ml-4m rejects them too)")
    chunks = [f"v1={METADATA_FIELDS[n][0]} v0={metadata_bin(float(v), METADATA_FIELDS[n][1])}"
              for n, v in sorted(value.items(), key=lambda kv: METADATA_FIELDS[kv[0]][0]) if v is not None]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return " ".join(chunks)


def _persons(value: dict) -> list[dict]:
    """Per-person dicts from either a ``persons`` list or ml-4m's per-field lists."""
    if not value:
        return []
    if "persons" in value:
        return list(value["persons"])
    n = len(value.get("bbox_xyxy", []))
    smpl = value.get("pred_smpl_params", {})
    return [{"bbox_xyxy": value["bbox_xyxy"][i],
             "pred_smpl_params": {k: v[i] for k, v in smpl.items()},
             **{k: value[k][i] for k in ("pose_tokenized", "pred_cam") if k in value}} for i in range(n)]


def _values(xs, scale: float, offset: float, lo: float = -np.inf, hi: float = np.inf) -> list[str]:
    flat = np.clip(np.asarray(xs, dtype=np.float64).reshape(-1), lo, hi)
    return [f"v0={int(min(max(round(scale * x + offset), 0), COORD_MAX))}" for x in flat]


def _code_ids(ids) -> list[str]:
    """ml-4m's spelling of codebook ids in a sequence: ``v0=t`` below 512, else ``v1=t-512``."""
    return [f"v0={t}" if t < 512 else f"v1={t - 512}" for t in (int(t) for t in ids)]


def serialize_human_poses(value: dict, crop_row=None, image_hw=None, rng=None) -> str:
    """Per person ``human <bbox>`` then the pose/global/camera/shape groups; ``none`` if empty.

    ``value``: a human_poses label, or a ``human_poses@tok`` member (poses.py), which adds
    ``pose_tokenized`` per person and the rgb ``height``/``width`` (used without ``image_hw``)."""
    people = []
    if image_hw is None and value and "height" in value:
        image_hw = (int(value["height"]), int(value["width"]))
    for p in _persons(value):
        if image_hw is None:
            raise ValueError("human_poses boxes are in pixels: pass image_hw")
        H, W = image_hw
        x0, y0, x1, y1 = (float(v) for v in p["bbox_xyxy"])
        box = _crop_box([x0 / W, y0 / H, x1 / W, y1 / H], crop_row, image_hw)
        if box is None:
            continue
        if crop_row is not None and crop_row[4]:
            box = (1.0 - box[2], box[1], 1.0 - box[0], box[3])  # ml-4m applies no flip to poses: undo the crop helper's
        smpl = p.get("pred_smpl_params", {})
        groups = []
        if "pose_tokenized" in p:
            groups.append("pose " + " ".join(_code_ids(p["pose_tokenized"])))
        if "global_orient" in smpl:
            groups.append("global " + " ".join(_values(smpl["global_orient"], 499.5, 499.5)))
        if "pred_cam" in p:
            groups.append("camera " + " ".join(_values(p["pred_cam"], 49.95, 49.95, -1, 19)))
        if "betas" in smpl:
            groups.append("shape " + " ".join(_values(smpl["betas"], 166.5, 499.5)))
        if rng is not None:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        people.append(" ".join([f"human v0={_q(box[0])} v1={_q(box[1])} v2={_q(box[2])} v3={_q(box[3])}"] + groups))
    return " ".join(people) if people else "none"


#: ml-4m's SAMInstanceTokTransform asks about 7 random points of the crop
SAM_QUERY_POINTS = 7


def serialize_sam_instance(value: dict, crop_row=None, image_hw=None, rng=None) -> str:
    """Per random query point ``point v0=y v1=x``, then ``none`` or, for every instance whose
    contour holds it, ``polygon v0=xmin v1=ymin v2=xmax v3=ymax`` and its tokens.

    ``value`` is a sam_instance token member (instances.py), not the RLE label; the crop is
    the one whose row equals ``crop_row`` (row 0 without one). Coordinates are crop pixels."""
    import cv2

    if not isinstance(value, dict) or "crops" not in value:
        raise ValueError("sam_instance: this is not a token member (RLE labels must be tokenized first: "
                         "`prism4m tokenize` with a sam_instance tokenizer writes sam_instance@<size>/)")
    crops = value["crops"]
    want = None if crop_row is None else [int(v) for v in crop_row]
    crop = crops[0] if want is None else next((c for c in crops if c["crop"] == want), None)
    if crop is None:
        raise ValueError(f"sam_instance: no tokens for crop row {want}")
    size = int(value["crop_size"])
    rng = rng if rng is not None else np.random.default_rng(0)
    ys, xs = rng.integers(0, size, SAM_QUERY_POINTS), rng.integers(0, size, SAM_QUERY_POINTS)
    contours = [np.asarray(p, dtype=np.int32).reshape(-1, 1, 2) for p in crop["points"]]
    parts: list[str] = []
    for x, y in zip(xs.tolist(), ys.tolist()):
        parts += ["point", f"v0={y}", f"v1={x}"]
        hits = [i for i, c in enumerate(contours) if cv2.pointPolygonTest(c, (float(x), float(y)), False) >= 0]
        if not hits:
            parts.append("none")
        for i in (hits[j] for j in rng.permutation(len(hits))):
            ymin, xmin, ymax, xmax = (int(v) for v in crop["bbox"][i])
            parts += ["polygon", f"v0={xmin}", f"v1={ymin}", f"v2={xmax}", f"v3={ymax}"]
            parts += _code_ids(crop["token_ids"][i])
    return " ".join(parts)


def serialize_caption(value, crop_row=None, image_hw=None, rng=None, crop_index: int = 0) -> str:
    """A str, a list of str or of {"caption": str} (lists indexed by crop)."""
    if isinstance(value, list):
        value = value[min(crop_index, len(value) - 1)] if value else ""
    if isinstance(value, dict):
        value = value.get("caption", "")
    return str(value)


SERIALIZERS = {
    "caption": serialize_caption,
    "det": serialize_det,
    "color_palette": serialize_color_palette,
    "metadata": serialize_metadata,
    "human_poses": serialize_human_poses,
}

#: Sequences built from token folders rather than labels, keyed by the folder's name before
#: "@" (``sam_instance@224``, ``human_poses@tok``). SERIALIZERS' keys are the label folders
#: a text tokenizer reads (``sam_instance/`` holds RLE masks, which have no sequence).
TOKEN_FOLDER_SERIALIZERS = {
    "sam_instance": serialize_sam_instance,
    "human_poses": serialize_human_poses,  # human_poses@tok: the labels plus pose tokens
}


#: The label folders whose members are text sequences (the modality table's sequence folders
#: that have a label serializer), in the order of the Parquet export's columns and of a text
#: tokenizer's training corpus.
SEQUENCE_LABEL_FOLDERS = ("caption", "det", "metadata", "color_palette", "human_poses")


def token_sequence_folders(folders: list[str]) -> list[str]:
    """The current token folders among ``folders`` that have a serializer (kept versions
    ``…~hash`` are not current)."""
    return [f for f in folders if "@" in f and VERSION_SEP not in f and f.split("@")[0] in TOKEN_FOLDER_SERIALIZERS]
