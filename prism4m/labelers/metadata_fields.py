"""The 4M-21 metadata fields the metadata labeler computes, and how (ALL_FIELDS).

Image statistics (on the ingested 8-bit RGB image):
- original_width / original_height: size of the source image before resizing (source/ KEY.json).
- colorfulness: Hasler & Süsstrunk (2003): sqrt(σ_rg²+σ_yb²) + 0.3·sqrt(μ_rg²+μ_yb²) with
  rg = R−G and yb = (R+G)/2 − B; ≈0 for gray images, >100 for saturated ones (4M bins 0..150).
- brightness: mean of the ITU-R BT.601 luma, 0..255.
- contrast: standard deviation of that luma (RMS contrast), 0..~127.
- saturation: mean of HSV saturation scaled to 0..255.
- entropy: Shannon entropy in bits of the 256-bin luma histogram, 0..8.

Fields that follow from other modalities: ml-4m names these fields and bins them
(4M_FORMAT.md §7) but does not publish how they were computed, so every definition below is ours. Each is a pure function of the committed
members named in its `inputs`; the metadata labeler computes a field only when all of them
are committed for the shard, so a dataset without SAM simply has no `n_sam_instances`.
Values stay inside 4M's bin ranges where the definition allows it.

Counts (integers; 4M clamps them to 0..999):
- n_humans (human_poses/ KEY.json): number of entries in `persons`; `{}` (4M's "no human")
  counts 0. The pose labeler has already applied its detection threshold.
- n_sam_instances (sam_instance/ KEY.json): number of entries in `instances`.
- n_coco_instances (det/ KEY.json): instances with `score >= DET_MIN_SCORE` (0.6), the same
  cut 4M's det serializer applies, so the count matches the boxes the model sees.
- coco_instance_diversity (det/): number of distinct `class_name` among those instances.
- caption_n_chars (caption/ KEY.txt): characters (Unicode code points) of the stripped
  UTF-8 caption.
- caption_n_words: whitespace-separated tokens of the caption.
- caption_n_sentences: pieces of the caption after splitting at whitespace that follows
  `.`, `!` or `?`; pieces without a letter or digit do not count. "A dog. A cat" → 2,
  "Wow!! Great" → 2, "3.5 m tall." → 1 (no split inside numbers), "" → 0.

Semantic shares (semseg_coco/ KEY.png: COCO panoptic class ids 0..132, 255 = no class; the
denominator is every pixel of the image, unlabeled ones included):
- semantic_diversity: number of distinct class ids each covering at least
  SEMANTIC_MIN_SHARE (1 %) of the image; the floor keeps stray pixels of a segmenter from
  counting as a class. Integer.
- walkability: share of pixels whose class is one a person could walk on: the stuff classes
  in WALKABLE_CLASSES (floors, rug, road, pavement, platform, playingfield, stairs, grass,
  dirt, gravel, sand, snow). 0..1.
- objectness: share of pixels in COCO "thing" classes (ids 0..79: people, animals,
  vehicles, furniture, objects). 0..1.

Geometry (4M bins both over a range narrower than the definition's, see each):
- geometric_complexity (normal/ KEY.png, 4M's convention: 8-bit RGB mapped to [-1, 1]):
  the spherical variance of the surface normals, 1 − ‖mean of the unit normals‖, which
  equals the mean of (1 − cos θ) over pixels, θ being each normal's angle to the mean
  normal direction. One plane → 0; a sphere seen from the front (normals uniform over the
  visible hemisphere) → 0.5; a room corner of three equal orthogonal planes → 1 − 1/√3 ≈
  0.42. Normals of visible surfaces face the camera, so values above ~0.75 (4M's upper
  bin) need surfaces seen nearly edge-on. Pixels whose decoded vector is shorter than 0.5
  (no normal) are ignored; no valid pixel → 0.
- occlusion_score (sam_instance/): 1 − area(union of instance masks) / Σ instance areas,
  i.e. the share of instance area lying under another instance (SAM masks overlap where a
  part and its whole are both kept, or where objects occlude each other). Disjoint
  instances → 0; an instance entirely inside one four times its size → 0.2; n identical
  masks → 1 − 1/n. No instance → 0. 4M bins it over 0..0.25.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import cv2
import numpy as np

from prism4m.contract.members import decode_png
from prism4m.labelers.base import LabelInput


class MetadataContext:
    """Lazily decoded inputs of one sample, shared by all field functions."""

    def __init__(self, sample: LabelInput):
        self.sample = sample
        self._json: dict[str, object] = {}

    @cached_property
    def luma(self) -> np.ndarray:
        return cv2.cvtColor(self.sample.image, cv2.COLOR_RGB2GRAY)

    def json(self, folder: str):
        if folder not in self._json:
            self._json[folder] = json.loads(self.sample.inputs[folder])
        return self._json[folder]

    def png(self, folder: str) -> np.ndarray:
        return decode_png(self.sample.inputs[folder])


@dataclass(frozen=True)
class MetadataField:
    name: str
    inputs: tuple[str, ...]
    compute: Callable[[MetadataContext], float | int]


def _colorfulness(ctx: MetadataContext) -> float:
    rgb = ctx.sample.image.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _saturation(ctx: MetadataContext) -> float:
    hsv = cv2.cvtColor(ctx.sample.image, cv2.COLOR_RGB2HSV)
    return float(hsv[..., 1].mean())


def _entropy(ctx: MetadataContext) -> float:
    hist = np.bincount(ctx.luma.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


IMAGE_FIELDS: list[MetadataField] = [
    MetadataField("original_width", ("source",), lambda c: int(c.json("source")["original_width"])),
    MetadataField("original_height", ("source",), lambda c: int(c.json("source")["original_height"])),
    MetadataField("colorfulness", (), _colorfulness),
    MetadataField("brightness", (), lambda c: float(c.luma.mean())),
    MetadataField("contrast", (), lambda c: float(c.luma.std())),
    MetadataField("saturation", (), _saturation),
    MetadataField("entropy", (), _entropy),
]

DET_MIN_SCORE = 0.6
SEMANTIC_MIN_SHARE = 0.01
SEMSEG_NO_CLASS = 255
COCO_THING_IDS = range(0, 80)

#: COCO's 80 thing classes in contiguous id order 0..79 (the order of COCO's category ids)
COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: COCO panoptic stuff classes in the contiguous order of ids 80..132 (panoptic2semseg order,
#: the one Mask2Former's COCO panoptic checkpoints use)
COCO_PANOPTIC_STUFF = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood",
    "flower", "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs",
    "tent", "towel", "wall-brick", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged",
    "building-other-merged", "rock-merged", "wall-other-merged", "rug-merged",
)
COCO_STUFF_ID = {name: 80 + i for i, name in enumerate(COCO_PANOPTIC_STUFF)}

WALKABLE_CLASSES = (
    "floor-wood", "floor-other-merged", "rug-merged", "road", "pavement-merged", "platform",
    "playingfield", "stairs", "grass-merged", "dirt-merged", "gravel", "sand", "snow",
)
WALKABLE_IDS = tuple(COCO_STUFF_ID[n] for n in WALKABLE_CLASSES)

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


# ---------------------------------------------------------------- decoded inputs
def _cached(ctx: MetadataContext, name: str, compute):
    # several fields read the same decoded member; compute it once per sample
    cache = ctx.__dict__.setdefault("_derived_cache", {})
    if name not in cache:
        cache[name] = compute()
    return cache[name]


def _semseg(ctx: MetadataContext) -> np.ndarray:
    ids = _cached(ctx, "semseg_coco", lambda: decode_png(ctx.sample.inputs["semseg_coco"]))
    if ids.ndim != 2:
        raise ValueError(f"semseg_coco member must be a single-channel class-id PNG, got shape {ids.shape}")
    return ids


def _class_shares(ctx: MetadataContext) -> np.ndarray:
    """share of the image's pixels per class id 0..255"""
    ids = _semseg(ctx)
    return _cached(ctx, "semseg_shares", lambda: np.bincount(ids.ravel(), minlength=256) / ids.size)


def _caption(ctx: MetadataContext) -> str:
    return _cached(ctx, "caption", lambda: ctx.sample.inputs["caption"].decode("utf-8").strip())


def _confident_detections(ctx: MetadataContext) -> list[dict]:
    return [d for d in ctx.json("det").get("instances", []) if d["score"] >= DET_MIN_SCORE]


# ---------------------------------------------------------------- counts
def n_humans(ctx: MetadataContext) -> int:
    return len(ctx.json("human_poses").get("persons", []))


def n_sam_instances(ctx: MetadataContext) -> int:
    return len(ctx.json("sam_instance").get("instances", []))


def n_coco_instances(ctx: MetadataContext) -> int:
    return len(_confident_detections(ctx))


def coco_instance_diversity(ctx: MetadataContext) -> int:
    return len({d["class_name"] for d in _confident_detections(ctx)})


def caption_n_chars(ctx: MetadataContext) -> int:
    return len(_caption(ctx))


def caption_n_words(ctx: MetadataContext) -> int:
    return len(_caption(ctx).split())


def caption_n_sentences(ctx: MetadataContext) -> int:
    return sum(1 for s in _SENTENCE_BREAK.split(_caption(ctx)) if any(ch.isalnum() for ch in s))


# ---------------------------------------------------------------- semantic shares
def semantic_diversity(ctx: MetadataContext) -> int:
    shares = _class_shares(ctx).copy()
    shares[SEMSEG_NO_CLASS] = 0.0
    return int((shares >= SEMANTIC_MIN_SHARE).sum())


def walkability(ctx: MetadataContext) -> float:
    return float(_class_shares(ctx)[list(WALKABLE_IDS)].sum())


def objectness(ctx: MetadataContext) -> float:
    return float(_class_shares(ctx)[COCO_THING_IDS.start:COCO_THING_IDS.stop].sum())


# ---------------------------------------------------------------- geometry
def normals_from_png(rgb: np.ndarray) -> np.ndarray:
    """8-bit normal PNG (4M convention, [0,255] → [-1,1]) → (N, 3) unit normals of valid pixels."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"normal member must be an RGB PNG, got shape {rgb.shape}")
    v = rgb[..., :3].reshape(-1, 3).astype(np.float64) / 255.0 * 2.0 - 1.0
    norm = np.linalg.norm(v, axis=1)
    valid = norm >= 0.5
    return v[valid] / norm[valid, None]


def geometric_complexity(ctx: MetadataContext) -> float:
    n = normals_from_png(ctx.png("normal"))
    if len(n) == 0:
        return 0.0
    return float(1.0 - np.linalg.norm(n.mean(axis=0)))


def _rles(record: dict) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = []
    for inst in record.get("instances", []):
        rle = inst["segmentation"]
        if isinstance(rle["counts"], list):  # uncompressed RLE → compressed, as pycocotools wants
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        out.append(rle)
    return out


def occlusion_score(ctx: MetadataContext) -> float:
    from pycocotools import mask as mask_utils

    rles = _rles(ctx.json("sam_instance"))
    if not rles:
        return 0.0
    total = float(mask_utils.area(rles).sum())
    if total == 0:
        return 0.0
    union = float(mask_utils.area(mask_utils.merge(rles, intersect=False)))
    return 1.0 - union / total


DERIVED_FIELDS: list[MetadataField] = [
    MetadataField("caption_n_chars", ("caption",), caption_n_chars),
    MetadataField("caption_n_words", ("caption",), caption_n_words),
    MetadataField("caption_n_sentences", ("caption",), caption_n_sentences),
    MetadataField("n_humans", ("human_poses",), n_humans),
    MetadataField("n_sam_instances", ("sam_instance",), n_sam_instances),
    MetadataField("n_coco_instances", ("det",), n_coco_instances),
    MetadataField("coco_instance_diversity", ("det",), coco_instance_diversity),
    MetadataField("walkability", ("semseg_coco",), walkability),
    MetadataField("objectness", ("semseg_coco",), objectness),
    MetadataField("semantic_diversity", ("semseg_coco",), semantic_diversity),
    MetadataField("geometric_complexity", ("normal",), geometric_complexity),
    MetadataField("occlusion_score", ("sam_instance",), occlusion_score),
]

#: every field the metadata labeler can compute, image statistics first
ALL_FIELDS: list[MetadataField] = IMAGE_FIELDS + DERIVED_FIELDS
