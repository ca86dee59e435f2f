"""Turn stored sequence modalities into text for the WordPiece tokenizer.

The strings follow ml-4m's serialisations (4M_FORMAT.md §4.2, §7). Every serializer gets
the decoded member (str / JSON object), the crop index, the crop row ``(top, left, h, w, hflip)`` chosen for
the sample (or None) and the sample's RNG; it returns the text to tokenize, or None when
the member holds nothing usable.

Known simplification: det boxes are serialised in full-image coordinates (flipped with the
crop's hflip) because the crop rectangle is in rgb pixel space and the image size is not in
the token shards.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

Serializer = Callable[[Any, int, "np.ndarray | None", np.random.Generator], "str | None"]

COORD_BINS = 1000
DET_MIN_SCORE = 0.6


def caption_text(value: Any, crop_index: int, crop_row: np.ndarray | None, rng: np.random.Generator) -> str | None:
    """A str, a list of str, or a list of {"caption": str}; lists are indexed by crop."""
    if isinstance(value, dict):
        value = value.get("caption")
    if isinstance(value, list):
        if not value:
            return None
        value = value[min(crop_index, len(value) - 1)]
        if isinstance(value, dict):
            value = value.get("caption")
    return value if isinstance(value, str) and value else None


def det_text(value: Any, crop_index: int, crop_row: np.ndarray | None, rng: np.random.Generator) -> str | None:
    instances = (value or {}).get("instances", []) if isinstance(value, dict) else []
    flip = bool(crop_row is not None and crop_row[4])
    boxes = []
    for inst in instances:
        if inst.get("score", 1.0) < DET_MIN_SCORE:
            continue
        xmin, ymin, xmax, ymax = (float(v) for v in inst["boxes"])
        if flip:
            xmin, xmax = 1.0 - xmax, 1.0 - xmin
        boxes.append((xmin, ymin, xmax, ymax, inst["class_name"]))
    boxes.sort(key=lambda b: b[0] ** 2 + b[1] ** 2)  # ml-4m's 'dist_to_orig' order
    q = COORD_BINS - 1
    parts = [
        f"v0={round(x0 * q)} v1={round(y0 * q)} v2={round(x1 * q)} v3={round(y1 * q)} {name}"
        for x0, y0, x1, y1, name in boxes
    ]
    return " ".join(parts)  # no boxes is an answer too: the target is just [EOS]


def color_palette_text(value: Any, crop_index: int, crop_row: np.ndarray | None, rng: np.random.Generator) -> str | None:
    palettes = value[0] if isinstance(value, list) and value else value
    if not isinstance(palettes, dict) or not palettes:
        return None
    sizes = sorted(int(k) for k in palettes)
    k = sizes[int(rng.integers(len(sizes)))]
    colors = [c for rgb in palettes[str(k)] for c in rgb]
    return " ".join([f"v1={round(len(colors) / 3)}"] + [f"v0={int(c)}" for c in colors])


# 4M-21 metadata fields: (id, binning). Integers are clamped to 0..999; ranges get 50 bins.
_METADATA_FIELDS: dict[str, tuple[int, Any]] = {
    "original_width": (0, "div32"),
    "original_height": (1, "div32"),
    "caption_n_chars": (2, "int"),
    "caption_n_words": (3, "int"),
    "caption_n_sentences": (4, "int"),
    "n_humans": (5, "int"),
    "n_sam_instances": (6, "int"),
    "n_coco_instances": (7, "int"),
    "coco_instance_diversity": (8, "int"),
    "colorfulness": (9, (0, 150)),
    "brightness": (10, (0, 255)),
    "contrast": (11, (0, 127)),
    "saturation": (12, (0, 255)),
    "entropy": (13, (0, 10)),
    "walkability": (14, (0, 1)),
    "objectness": (15, (0, 1)),
    "semantic_diversity": (16, "int"),
    "geometric_complexity": (17, (0, 0.75)),
    "occlusion_score": (18, (0, 0.25)),
    "watermark_score": (19, [0.5]),
    "aesthetic_score": (20, [4.5, 5.5]),
}


def _metadata_bin(value: float, binning: Any) -> int:
    if binning == "div32":
        return int(min(max(value // 32, 0), 999))
    if binning == "int":
        return int(min(max(value, 0), 999))
    if isinstance(binning, list):
        return int(np.searchsorted(binning, value, side="right"))
    lo, hi = binning
    return int((min(max(value, lo), hi) - lo) / (hi - lo) * 49)


def metadata_text(value: Any, crop_index: int, crop_row: np.ndarray | None, rng: np.random.Generator) -> str | None:
    if not isinstance(value, dict):
        return None
    chunks = [
        f"v1={_METADATA_FIELDS[name][0]} v0={_metadata_bin(float(v), _METADATA_FIELDS[name][1])}"
        for name, v in value.items()
        if name in _METADATA_FIELDS and v is not None
    ]
    if not chunks:
        return None
    order = rng.permutation(len(chunks))  # ml-4m shuffles metadata chunks
    return " ".join(chunks[i] for i in order)


def _tokenizer_stage_serializers() -> dict[str, Serializer]:
    """The serializers the text tokenizer was trained with (prism4m.tokenizers), adapted to
    this module's signature, so training text matches tokenizer-training text. The rgb image
    size is not in the token shards, so boxes stay in full-image coordinates."""
    try:
        from prism4m.tokenizers import serializers as stage
    except Exception:  # the tokenizers package is optional for the trainer
        return {}
    out: dict[str, Serializer] = {}
    for name, fn in getattr(stage, "SERIALIZERS", {}).items():
        if name == "caption":
            out[name] = lambda v, ci, cr, rng, fn=fn: fn(v, cr, None, rng, crop_index=ci) or None
        else:
            out[name] = lambda v, ci, cr, rng, fn=fn: fn(v, cr, None, rng)
    return out


SERIALIZERS: dict[str, Serializer] = {
    "caption": caption_text,
    "det": det_text,
    "color_palette": color_palette_text,
    "metadata": metadata_text,
    **_tokenizer_stage_serializers(),
}


def decode_member(ext: str, data: bytes) -> Any:
    """Decode a sequence-modality member by extension (.txt -> str, .json -> object)."""
    if ext.endswith("json"):
        return json.loads(data)
    return data.decode("utf-8")
