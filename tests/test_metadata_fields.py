"""Metadata fields derived from other modalities: each definition on small constructed inputs.

Expected values follow from the definitions in prism4m/labelers/metadata_fields.py (worked
out by hand here), not from running the code.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

# metadata before metadata_fields: see test_optional_inputs_do_not_depend_on_import_order
from prism4m.labelers.metadata import MetadataContext, MetadataLabeler
from prism4m.labelers import metadata_fields as mf
from prism4m.labelers.base import LabelInput
from prism4m.contract.members import encode_json, encode_png

IMAGE = np.zeros((8, 8, 3), np.uint8)


def ctx(**inputs: bytes) -> MetadataContext:
    return MetadataContext(LabelInput(key="k", image=IMAGE, inputs=inputs))


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def sam_json(masks: list[np.ndarray]) -> bytes:
    h, w = masks[0].shape if masks else (8, 8)
    return encode_json({"height": h, "width": w, "instances": [
        {"segmentation": rle(m), "bbox": [0, 0, 1, 1], "score": 0.9, "stability_score": 0.9,
         "area": int(m.sum())} for m in masks]})


def box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------ counts
def test_n_humans_counts_persons_and_empty_record_is_zero():
    person = {"bbox_xyxy": [0, 0, 4, 4], "score": 0.9, "keypoints": [[1, 1, 0.5]] * 17}
    assert mf.n_humans(ctx(human_poses=encode_json({}))) == 0
    assert mf.n_humans(ctx(human_poses=encode_json({"persons": [person, person]}))) == 2


def test_n_sam_instances():
    assert mf.n_sam_instances(ctx(sam_instance=sam_json([]))) == 0
    masks = [box(8, 8, 0, 2, 0, 2), box(8, 8, 4, 8, 4, 8), box(8, 8, 0, 8, 0, 8)]
    assert mf.n_sam_instances(ctx(sam_instance=sam_json(masks))) == 3


def test_coco_counts_keep_score_at_least_0_6_like_4m_serializer():
    det = {"instances": [
        {"boxes": [0, 0, .5, .5], "class_name": "dog", "score": 0.95},
        {"boxes": [.1, .1, .5, .5], "class_name": "dog", "score": 0.7},
        {"boxes": [.2, .2, .9, .9], "class_name": "person", "score": 0.6},   # boundary: kept
        {"boxes": [.3, .3, .4, .4], "class_name": "cat", "score": 0.59},     # dropped
    ]}
    c = ctx(det=encode_json(det))
    assert mf.n_coco_instances(c) == 3
    assert mf.coco_instance_diversity(c) == 2          # dog, person
    empty = ctx(det=encode_json({"instances": []}))
    assert mf.n_coco_instances(empty) == 0 and mf.coco_instance_diversity(empty) == 0


@pytest.mark.parametrize("text,chars,words,sentences", [
    ("  A dog runs. It is happy!  \n", 24, 6, 2),
    ("a man riding a horse", 20, 5, 1),
    ("Café au lait.", 13, 3, 1),           # code points, not UTF-8 bytes
    ("It is 3.5 m tall.", 17, 5, 1),       # no sentence break inside a number
    ("Wow!! Great", 11, 2, 2),
    ("", 0, 0, 0),
    ("...", 3, 1, 0),                      # punctuation alone is no sentence
])
def test_caption_counts(text, chars, words, sentences):
    c = ctx(caption=text.encode("utf-8"))
    assert (mf.caption_n_chars(c), mf.caption_n_words(c), mf.caption_n_sentences(c)) == (chars, words, sentences)


# ------------------------------------------------------------------ semantic shares
def test_class_table_is_coco_panoptic_133():
    assert len(mf.COCO_PANOPTIC_STUFF) == 53                    # 80 things + 53 stuff = 133
    assert mf.COCO_STUFF_ID["banner"] == 80 and mf.COCO_STUFF_ID["rug-merged"] == 132
    assert mf.COCO_STUFF_ID["road"] == 100 and mf.COCO_STUFF_ID["grass-merged"] == 125
    assert all(80 <= i <= 132 for i in mf.WALKABLE_IDS)


def test_half_road_is_walkability_half():
    seg = np.full((10, 10), 255, np.uint8)
    seg[:5] = mf.COCO_STUFF_ID["road"]
    c = ctx(semseg_coco=encode_png(seg))
    assert mf.walkability(c) == pytest.approx(0.5)
    assert mf.objectness(c) == 0.0
    assert mf.semantic_diversity(c) == 1                        # 255 (no class) is not a class


def test_shares_mixed_scene():
    seg = np.full((100, 100), mf.COCO_STUFF_ID["sky-other-merged"], np.uint8)   # 49.5 %
    seg[:30] = 0                                                 # person 30 %
    seg[30:50] = mf.COCO_STUFF_ID["grass-merged"]               # 20 %
    seg[50, :50] = 2                                             # car 0.5 %: below the 1 % floor
    c = ctx(semseg_coco=encode_png(seg))
    assert mf.objectness(c) == pytest.approx(0.305)              # person + car are things
    assert mf.walkability(c) == pytest.approx(0.20)
    assert mf.semantic_diversity(c) == 3                         # person, grass, sky
    seg[51, :50] = 2                                             # car now 1 %: counts
    assert mf.semantic_diversity(ctx(semseg_coco=encode_png(seg))) == 4


def test_semseg_must_be_class_ids():
    with pytest.raises(ValueError, match="single-channel"):
        mf.walkability(ctx(semseg_coco=encode_png(np.zeros((4, 4, 3), np.uint8))))


# ------------------------------------------------------------------ geometry
def normal_png(n: np.ndarray) -> bytes:
    """unit normals (H, W, 3) → 4M's 8-bit encoding"""
    return encode_png(np.clip(np.round((n + 1) / 2 * 255), 0, 255).astype(np.uint8))


def test_one_plane_has_zero_complexity():
    n = np.zeros((16, 16, 3))
    n[..., 2] = 1.0
    assert mf.geometric_complexity(ctx(normal=normal_png(n))) == pytest.approx(0.0, abs=1e-9)


def test_two_orthogonal_planes():
    n = np.zeros((16, 16, 3))
    n[:8, :, 2] = 1.0   # facing the camera
    n[8:, :, 1] = 1.0   # floor
    # mean = (0, .5, .5): 1 - |mean| = 1 - 1/√2
    assert mf.geometric_complexity(ctx(normal=normal_png(n))) == pytest.approx(1 - 1 / math.sqrt(2), abs=0.01)


def test_sphere_seen_from_front_is_about_half():
    # normals of a sphere, sampled uniformly over the visible hemisphere (area-uniform ⇒ z uniform)
    rng = np.random.default_rng(0)
    z = rng.uniform(0, 1, 40000)
    phi = rng.uniform(0, 2 * np.pi, 40000)
    r = np.sqrt(1 - z ** 2)
    n = np.stack([r * np.cos(phi), r * np.sin(phi), z], -1).reshape(200, 200, 3)
    value = mf.geometric_complexity(ctx(normal=normal_png(n)))
    assert value == pytest.approx(0.5, abs=0.02)
    assert 0 <= value <= 0.75                                    # inside 4M's bin range


def test_pixels_without_normal_are_ignored():
    n = np.zeros((16, 16, 3))
    n[..., 2] = 1.0
    png = (np.clip(np.round((n + 1) / 2 * 255), 0, 255)).astype(np.uint8)
    png[:8] = 128                                                # (0,0,0): no normal
    assert mf.geometric_complexity(ctx(normal=encode_png(png))) == pytest.approx(0.0, abs=1e-9)
    assert mf.geometric_complexity(ctx(normal=encode_png(np.full((4, 4, 3), 128, np.uint8)))) == 0.0


def test_occlusion_score():
    a = box(40, 40, 0, 20, 0, 20)            # 400 px
    b = box(40, 40, 5, 15, 5, 15)            # 100 px inside a
    c = box(40, 40, 25, 35, 25, 35)          # disjoint
    score = lambda masks: mf.occlusion_score(ctx(sam_instance=sam_json(masks)))
    assert score([a, c]) == 0.0
    assert score([a, b]) == pytest.approx(1 - 400 / 500)       # 0.2
    assert score([a, a, a]) == pytest.approx(2 / 3)
    assert score([]) == 0.0


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with a 0-run."""
    counts, current, run = [], False, 0
    for v in mask.T.ravel():
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    return counts + [run]


def test_occlusion_accepts_uncompressed_rle():
    a = box(20, 20, 0, 10, 0, 10)
    b = box(20, 20, 5, 15, 5, 15)            # 25 px overlap: union 175 of 200
    compressed = json.loads(sam_json([a, b]))
    for inst, m in zip(compressed["instances"], (a, b)):
        inst["segmentation"] = {"size": [20, 20], "counts": uncompressed_counts(m)}
    assert mf.occlusion_score(ctx(sam_instance=encode_json(compressed))) == pytest.approx(1 - 175 / 200)


# ------------------------------------------------------------------ through the labeler
def test_metadata_labeler_writes_fields_whose_inputs_exist():
    det = {"instances": [{"boxes": [0, 0, 1, 1], "class_name": "dog", "score": 0.9}]}
    sample = LabelInput(key="k", image=np.full((8, 8, 3), 100, np.uint8), inputs={
        "source": encode_json({"original_width": 640, "original_height": 480}),
        "det": encode_json(det),
        "caption": b"A dog.",
    })
    record = json.loads(MetadataLabeler().label_batch([sample])[0])
    assert record["n_coco_instances"] == 1 and record["coco_instance_diversity"] == 1
    assert record["caption_n_words"] == 2
    for absent in ("n_humans", "n_sam_instances", "walkability", "objectness",
                   "semantic_diversity", "geometric_complexity", "occlusion_score"):
        assert absent not in record


def test_every_derived_field_is_a_4m_field_with_declared_inputs():
    names = {f.name for f in mf.DERIVED_FIELDS}
    assert names == {"n_humans", "n_sam_instances", "n_coco_instances", "coco_instance_diversity",
                     "caption_n_chars", "caption_n_words", "caption_n_sentences", "semantic_diversity",
                     "walkability", "objectness", "geometric_complexity", "occlusion_score"}
    assert set(MetadataLabeler().optional_inputs) >= {i for f in mf.DERIVED_FIELDS for i in f.inputs}


def test_optional_inputs_do_not_depend_on_import_order():
    code = ("import prism4m.labelers.metadata_fields\n"
            "from prism4m.labelers.metadata import MetadataLabeler\n"
            "print(','.join(MetadataLabeler().optional_inputs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "semseg_coco" in out.strip().split(",")
