"""sam_instance (BatchedMaskGenerator) against segment-anything's SamAutomaticMaskGenerator, on CPU.

    python benchmarks/bench_sam_amg.py [WORKDIR]     # prints JSON

Both run in this one process on the same weights — the tiny SAM of tests/sam_amg_fixtures.py,
rescaled so its automatic masks are a varied set — with the same settings (its SETTINGS:
16×16 prompts, pred_iou 0.88, stability 0.15, NMS 0.7) on the same photos: scikit-image's
coffee, astronaut and rocket at short side 512 (prism4m ingest's default), i.e. 512×768, 512×512,
512×768. "Ours" is the sam_instance labeler's `label_batch` (generator, area/bbox, JSON); the
reference is the same labeler with its generator swapped for `SamAutomaticMaskGenerator(…,
output_mode="coco_rle")` at its default points_per_batch 64 — what sam_instance ran before.
Repeats alternate reference and ours, so load on a shared machine hits both alike.

- sam_amg_speedup: the reference's seconds ÷ ours over the photos (= our img/s ÷ its img/s),
  median over REPEATS passes (crop_n_layers 0); each photo is run by the reference then by ours
  back to back, so the two see the same load; sam_amg_ours_img_per_s / sam_amg_ref_img_per_s are
  the median img/s of each.
- sam_amg_mask_match: fraction of the reference's masks matched one-to-one by one of ours at mask
  IoU ≥ 0.99 (all photos, both crop settings); sam_amg_count_match: whether every photo had the
  same mask count.
- sam_amg_speedup_crop1: the same at crop_n_layers 1, one pass (the reference takes ~10× longer).
- sam_amg_pps{8,16,32}_crop{0,1}_img_per_s / _masks_per_img: our labeler alone over the
  points_per_side × crop_n_layers grid (the trade-off table of prism4m/labelers/sam.py).

Tiny models measure the generator's own work (decoder, filters, NMS, RLE), not ViT-H speed; the
decoder's cost per prompt is shared by both, so the ratio grows with image size and shrinks on
small images (at 200 px it is ~2–3×).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("coffee", "astronaut", "rocket")
SHORT_SIDE = 512
REPEATS = 5
IOU_MATCH = 0.99


def photos() -> list:
    import cv2
    import numpy as np

    from prism4m.demo import load_photo

    out = []
    for name in PHOTOS:
        img = load_photo(name)[..., :3]
        h, w = img.shape[:2]
        s = SHORT_SIDE / min(h, w)
        out.append(np.ascontiguousarray(cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)))
    return out


def labelers(sam_dir: str, settings: dict):
    """(ours, reference): two sam_instance labelers on one model, the second with the library's generator."""
    from segment_anything import SamAutomaticMaskGenerator

    from prism4m.labelers.sam import SamInstanceLabeler

    ours = SamInstanceLabeler({"checkpoint": sam_dir, "device": "cpu", **settings})
    ours.ensure_setup()
    ref = SamInstanceLabeler({"checkpoint": sam_dir, "device": "cpu", **settings})
    ref.ensure_setup()
    cfg = ref.config
    ref.generator = SamAutomaticMaskGenerator(
        ours.generator.model, points_per_side=cfg.points_per_side, points_per_batch=64,
        pred_iou_thresh=cfg.pred_iou_thresh, stability_score_thresh=cfg.stability_score_thresh,
        stability_score_offset=cfg.stability_score_offset, box_nms_thresh=cfg.box_nms_thresh,
        crop_n_layers=cfg.crop_n_layers, crop_nms_thresh=cfg.crop_nms_thresh,
        crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
        min_mask_region_area=cfg.min_mask_region_area, output_mode="coco_rle")
    return ours, ref


def timed(lab, img) -> tuple[float, list[dict]]:
    from prism4m.labelers.base import LabelInput

    t0 = time.perf_counter()
    out = json.loads(lab.label_batch([LabelInput("k", img)])[0])["instances"]
    return time.perf_counter() - t0, out


def timed_pass(lab, imgs) -> tuple[float, list[list[dict]]]:
    runs = [timed(lab, img) for img in imgs]
    return len(imgs) / sum(t for t, _ in runs), [out for _, out in runs]


def matched(ref: list[dict], ours: list[dict]) -> int:
    """Reference masks matched one-to-one by ours at IoU ≥ IOU_MATCH."""
    import numpy as np
    from pycocotools import mask as mask_utils

    if not ref or not ours:
        return 0
    dec = lambda insts: np.stack([mask_utils.decode({"size": i["segmentation"]["size"],  # noqa: E731
                                                     "counts": i["segmentation"]["counts"].encode()})
                                  for i in insts]).reshape(len(insts), -1).astype(np.float64)
    a, b = dec(ref), dec(ours)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
    used, n = set(), 0
    for i in np.argsort(-iou.max(1)):
        free = [j for j in np.argsort(-iou[i]) if int(j) not in used]
        if free and iou[i, free[0]] >= IOU_MATCH:
            used.add(int(free[0]))
            n += 1
    return n


def compare(sam_dir: str, settings: dict, imgs: list, repeats: int) -> dict:
    ours, ref = labelers(sam_dir, settings)
    timed_pass(ours, imgs[:1])  # warm-up: lazy imports, first allocations
    timed_pass(ref, imgs[:1])
    ref_s, our_s = [], []
    for _ in range(repeats):
        # Each photo by the reference then by ours: a pair sees the same load on a shared machine.
        pairs = [(timed(ref, img), timed(ours, img)) for img in imgs]
        ref_s.append(sum(r[0] for r, _ in pairs))
        our_s.append(sum(o[0] for _, o in pairs))
        ref_out, our_out = [r[1] for r, _ in pairs], [o[1] for _, o in pairs]
    return {"ref": len(imgs) / statistics.median(ref_s), "ours": len(imgs) / statistics.median(our_s),
            "speedup": statistics.median(r / o for r, o in zip(ref_s, our_s)),
            "n_ref": sum(len(x) for x in ref_out), "n_matched": sum(matched(a, b) for a, b in zip(ref_out, our_out)),
            "same_counts": all(len(a) == len(b) for a, b in zip(ref_out, our_out))}


def run(workdir: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from sam_amg_fixtures import SETTINGS, build_sam_varied

    sam_dir = build_sam_varied(Path(workdir) / "sam")
    imgs = photos()
    c0 = compare(sam_dir, {**SETTINGS, "crop_n_layers": 0}, imgs, REPEATS)
    c1 = compare(sam_dir, {**SETTINGS, "crop_n_layers": 1}, imgs, 1)
    out = {
        "sam_amg_speedup": round(c0["speedup"], 2),
        "sam_amg_ours_img_per_s": round(c0["ours"], 3),
        "sam_amg_ref_img_per_s": round(c0["ref"], 3),
        "sam_amg_speedup_crop1": round(c1["speedup"], 2),
        "sam_amg_mask_match": round((c0["n_matched"] + c1["n_matched"]) / max(1, c0["n_ref"] + c1["n_ref"]), 4),
        "sam_amg_count_match": c0["same_counts"] and c1["same_counts"],
        "sam_amg_ref_masks": c0["n_ref"] + c1["n_ref"],
    }
    # Trade-offs of our labeler alone: prompts per side × crop layers.
    from prism4m.labelers.sam import SamInstanceLabeler

    for crop in (0, 1):
        for pps in (8, 16, 32):
            lab = SamInstanceLabeler({"checkpoint": sam_dir, "device": "cpu", **SETTINGS,
                                      "points_per_side": pps, "crop_n_layers": crop})
            lab.ensure_setup()
            timed_pass(lab, imgs[:1])
            rate, res = timed_pass(lab, imgs)
            out[f"sam_amg_pps{pps}_crop{crop}_img_per_s"] = round(rate, 3)
            out[f"sam_amg_pps{pps}_crop{crop}_masks_per_img"] = round(sum(len(r) for r in res) / len(res), 1)
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
