"""sam_instance's batched mask generator against segment-anything's SamAutomaticMaskGenerator.

Same weights (the varied tiny SAM of sam_amg_fixtures, loaded by the labeler), same settings,
real skimage photos, crop_n_layers 0 and 1. Masks are compared by IoU, scores with tolerances,
never bytes: batching changes float rounding. Tolerances: every reference mask is matched
one-to-one at IoU ≥ 0.99 with the same count; predicted IoU within 1e-3 (the decoder's scores
differ in the last bits between batch sizes); stability within 1e-2 (a pixel or two at a ±1
logit cut moves it by 1/area).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from skimage import data

from prism4m.labelers.base import LabelInput
from prism4m.labelers.sam import SamInstanceLabeler
from prism4m.labelers.sam_amg import BatchedMaskGenerator, remove_small_regions_batched, rle_encode
from sam_amg_fixtures import SETTINGS, build_sam_varied

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PHOTOS = ("coffee", "astronaut", "rocket")
WIDTH = 160  # small photos: the reference generator is slow, the masks stay varied
IOU_MATCH, SCORE_TOL, STABILITY_TOL = 0.99, 1e-3, 1e-2


def photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    return cv2.resize(img, (WIDTH, round(img.shape[0] * WIDTH / img.shape[1])), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory) -> str:
    return build_sam_varied(tmp_path_factory.mktemp("sam_varied"))


@pytest.fixture(scope="module", params=[0, 1], ids=["crop0", "crop1"])
def labeler(request, sam_dir) -> SamInstanceLabeler:
    lab = SamInstanceLabeler({"checkpoint": sam_dir, "device": "cpu", "crop_n_layers": request.param, **SETTINGS})
    lab.ensure_setup()
    return lab


def reference(lab: SamInstanceLabeler, image: np.ndarray) -> list[dict]:
    """segment-anything's generator on the labeler's own model and settings (its default batch)."""
    from segment_anything import SamAutomaticMaskGenerator

    cfg = lab.config
    gen = SamAutomaticMaskGenerator(
        lab.generator.model, points_per_side=cfg.points_per_side, pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh, stability_score_offset=cfg.stability_score_offset,
        box_nms_thresh=cfg.box_nms_thresh, crop_n_layers=cfg.crop_n_layers, crop_nms_thresh=cfg.crop_nms_thresh,
        crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
        min_mask_region_area=cfg.min_mask_region_area, output_mode="coco_rle")
    return gen.generate(image)


def decode(seg: dict) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def mask_iou(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    fa = np.stack(a).reshape(len(a), -1).astype(np.float64)
    fb = np.stack(b).reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    return inter / np.maximum(fa.sum(1)[:, None] + fb.sum(1)[None] - inter, 1)


def match(ref: list[dict], ours: list[dict]) -> list[tuple[int, int, float]]:
    """One-to-one: each reference mask to its best unused mask of ours, most confident first."""
    iou = mask_iou([decode(r["segmentation"]) for r in ref], [decode(o["segmentation"]) for o in ours])
    pairs, used = [], set()
    for i in np.argsort(-iou.max(1)):
        j = next(int(j) for j in np.argsort(-iou[i]) if int(j) not in used)
        used.add(j)
        pairs.append((int(i), j, float(iou[i, j])))
    return pairs


@pytest.mark.parametrize("name", PHOTOS)
def test_masks_match_the_reference_generator(labeler, name):
    img = photo(name)
    ref = [r for r in reference(labeler, img) if r["area"] > 0]  # the labeler drops empty masks
    ours = json.loads(labeler.label_batch([LabelInput(name, img)])[0])["instances"]
    assert len(ref) >= 4, "the varied tiny SAM should give several masks per photo"
    assert len(ours) == len(ref)
    for i, j, iou in match(ref, ours):
        r, o = ref[i], ours[j]
        assert iou >= IOU_MATCH, (name, r["bbox"], o["bbox"], iou)
        assert abs(o["score"] - r["predicted_iou"]) <= SCORE_TOL
        assert abs(o["stability_score"] - r["stability_score"]) <= STABILITY_TOL
        assert abs(o["area"] - r["area"]) <= (1 - IOU_MATCH) * r["area"] + 1


def test_varied_tiny_sam_masks_are_not_degenerate(labeler):
    """The fixture's point: many masks, of many sizes, compact enough to survive NMS (not the
    plain tiny SAM's single speckled whole-image mask)."""
    fractions = []
    for name in PHOTOS:
        img = photo(name)
        areas = [i["area"] for i in json.loads(labeler.label_batch([LabelInput(name, img)])[0])["instances"]]
        assert len(areas) >= 4 and len(set(areas)) >= 0.8 * len(areas)  # not one mask repeated
        fractions += [a / (img.shape[0] * img.shape[1]) for a in areas]
    assert len(fractions) >= 20 and min(fractions) < 0.02 and max(fractions) > 0.2


def test_prompt_batch_size_does_not_change_the_masks(labeler):
    img = photo("astronaut")
    cfg = {k: getattr(labeler.config, k) for k in ("points_per_side", "pred_iou_thresh", "stability_score_thresh",
                                                   "box_nms_thresh", "crop_n_layers", "crop_nms_thresh")}
    small = BatchedMaskGenerator(labeler.generator.model, points_per_batch=7, crops_per_batch=1, **cfg).generate(img)
    large = BatchedMaskGenerator(labeler.generator.model, points_per_batch=4096, **cfg).generate(img)
    assert len(small) == len(large) > 0
    assert all(iou >= IOU_MATCH for _, _, iou in match(small, large))


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_small_region_removal_matches_the_reference(sam_dir, backend):
    lab = SamInstanceLabeler({"checkpoint": sam_dir, "device": "cpu", **SETTINGS, "min_mask_region_area": 40})
    lab.ensure_setup()
    lab.generator.small_regions = backend  # "auto" picks torch on a GPU only
    img = photo("coffee")
    ref = reference(lab, img)
    ours = lab.generator.generate(img)
    assert len(ours) == len(ref) > 0
    assert all(iou >= IOU_MATCH for _, _, iou in match(ref, ours))


def test_batched_small_region_removal_is_segment_anythings():
    """Exact, mask by mask: holes then islands, on blobs, specks (all islands small: the largest
    stays, ties as OpenCV labels them), empty and full masks."""
    import torch
    from segment_anything.utils.amg import remove_small_regions

    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(6, 48, 2))
        blobs = [cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (k, k), 0)
                 for k in rng.choice([1, 3, 5, 9], 3)]
        masks = np.stack([b > np.quantile(b, rng.uniform(0.2, 0.95)) for b in blobs]
                         + [rng.random((h, w)) < rng.uniform(0.02, 0.3) for _ in range(3)]
                         + [np.zeros((h, w), bool), np.ones((h, w), bool)])
        area = int(rng.integers(2, 30))
        new, changed = remove_small_regions_batched(torch.as_tensor(masks), area)
        for i, m in enumerate(masks):
            m, c_holes = remove_small_regions(m, area, mode="holes")
            m, c_islands = remove_small_regions(m, area, mode="islands")
            assert np.array_equal(new[i].numpy(), m), (trial, i, area)
            assert bool(changed[i]) == (c_holes or c_islands)


def test_rle_encode_is_pycocotools_encode():
    import torch

    rng = np.random.default_rng(0)
    h, w = 13, 17
    masks = rng.random((6, h, w)) > 0.6
    masks[0] = False                       # empty
    masks[1] = True                        # full
    masks[2] = False
    masks[2, 0, 0] = True                  # first pixel on: counts start with a 0 run
    masks[3] = False
    masks[3, -1, -1] = True                # last pixel on
    ours = rle_encode(torch.as_tensor(masks))
    ref = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [o["counts"] for o in ours] == [r["counts"].decode() for r in ref]
    assert all(o["size"] == [h, w] for o in ours)
    assert rle_encode(torch.zeros((0, h, w), dtype=torch.bool)) == []
