"""sam_instance / sam_edge: a tiny random SAM (segment-anything's own classes) saved as a .pth and
loaded back by the labeler; sam_edge from instances with known geometry; one run of the label
stage with SAM and CLIP on the photo root."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data

import model_fixtures_sam_clip as fx
from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.contract.members import decode_png, encode_json
from prism4m.labelers.registry import get_labeler_class
from prism4m.labelers.sam import SamEdgeLabeler, SamInstanceLabeler, infer_model_type
from prism4m.labelers.weights import weights_digest

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Random weights predict IoUs around 0.1 and unstable masks: thresholds 0 keep them. A 4×4
# prompt grid keeps the (pure-Python) RLE work of speckled random masks small.
LOW = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def small(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory) -> str:
    return fx.build_sam_tiny(tmp_path_factory.mktemp("sam_tiny"))


@pytest.fixture(scope="module")
def lab(sam_dir) -> SamInstanceLabeler:
    lab = SamInstanceLabeler({"checkpoint": sam_dir, **LOW})
    lab.ensure_setup()
    return lab


@pytest.fixture(scope="module")
def coffee_member(lab) -> tuple[np.ndarray, bytes]:
    img = small(data.coffee(), 150)  # 100×150
    return img, lab.label_batch([LabelInput("coffee", img)])[0]


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def test_registry_dependency_and_resources():
    assert get_labeler_class("sam_instance") is SamInstanceLabeler
    assert get_labeler_class("sam_edge") is SamEdgeLabeler
    assert SamEdgeLabeler.requires == ("sam_instance",)
    r = SamInstanceLabeler({"checkpoint": "x"}).resources
    assert 0 < r.num_gpus <= 1 and r.batch_size >= 1
    assert SamEdgeLabeler().resources.num_gpus == 0


def test_instances_are_coco_rle_at_rgb_resolution(coffee_member):
    img, member = coffee_member
    rec = json.loads(member)  # plain JSON, no pickle
    h, w = img.shape[:2]
    assert (rec["height"], rec["width"]) == (h, w)
    assert rec["instances"], "thresholds 0 must keep some masks"
    for inst in rec["instances"]:
        assert set(inst) == {"segmentation", "bbox", "area", "score", "stability_score"}
        assert isinstance(inst["segmentation"]["counts"], str)
        m = decode(inst["segmentation"])
        assert m.shape == (h, w)
        assert inst["area"] == int(m.sum()) > 0
        ys, xs = np.nonzero(m)
        assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert isinstance(inst["score"], float) and 0 <= inst["stability_score"] <= 1
    areas = [i["area"] for i in rec["instances"]]
    assert areas == sorted(areas, reverse=True)


def test_batch_of_different_sizes_is_deterministic(lab, coffee_member):
    img, member = coffee_member
    other = small(data.astronaut(), 96)
    out = lab.label_batch([LabelInput("a", other), LabelInput("b", img)])
    # same bytes as alone, whatever else is in the batch: SAM's generator runs one image at a
    # time (label_batch loops), so per-sample bit-identity is a promise here, not batched maths
    assert out[1] == member
    assert (json.loads(out[0])["height"], json.loads(out[0])["width"]) == other.shape[:2]


def test_pred_iou_threshold_reaches_the_generator(sam_dir, coffee_member):
    img, member = coffee_member
    scores = sorted(i["score"] for i in json.loads(member)["instances"])
    if len(set(scores)) < 2:
        pytest.skip("need two distinct scores to split")
    thr = (scores[0] + scores[-1]) / 2
    strict = SamInstanceLabeler({"checkpoint": sam_dir, **LOW, "pred_iou_thresh": thr})
    kept = json.loads(strict.label_batch([LabelInput("c", img)])[0])["instances"]
    assert 0 < len(kept) < len(scores) and all(i["score"] > thr for i in kept)


def test_safetensors_checkpoint_loads_the_same_model(sam_dir, tmp_path, coffee_member):
    import torch
    from safetensors.torch import save_file

    sd = torch.load(next(Path(sam_dir).glob("*.pth")), weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "sam.safetensors"))
    img, member = coffee_member
    lab = SamInstanceLabeler({"checkpoint": str(tmp_path / "sam.safetensors"), **LOW})
    assert lab.label_batch([LabelInput("c", img)])[0] == member


def test_model_type_is_read_from_the_weights():
    import torch

    assert infer_model_type({"image_encoder.patch_embed.proj.weight": torch.empty(1280, 3, 16, 16)}) == "vit_h"
    assert infer_model_type({"image_encoder.patch_embed.proj.weight": torch.empty(768, 3, 16, 16)}) == "vit_b"
    with pytest.raises(ValueError, match="model_type"):
        infer_model_type({"image_encoder.patch_embed.proj.weight": torch.empty(100, 3, 16, 16)})


def test_model_type_that_contradicts_the_weights_is_refused(sam_dir):
    with pytest.raises(ValueError, match=r"model_type.*'vit_b'.*'tiny'"):
        SamInstanceLabeler({"checkpoint": sam_dir, "model_type": "vit_b"}).ensure_setup()


def test_provenance_records_random_weights_and_hash(lab, sam_dir):
    prov = lab.model_provenance()
    assert prov["random_weights"] is True and prov["model_type"] == "tiny"
    assert prov["model_id"] == sam_dir
    assert prov["weights_sha256"] == weights_digest(next(Path(sam_dir).glob("*.pth")))
    assert prov["libraries"]["segment-anything"] and prov["libraries"]["torch"]


@pytest.mark.parametrize("checkpoint", [None, "/nonexistent/sam_vit_h_4b8939.pth"])
def test_missing_weights_names_the_config_key(checkpoint):
    with pytest.raises(MissingWeightsError, match=r"labelers\.sam_instance\.checkpoint"):
        SamInstanceLabeler({"checkpoint": checkpoint}).ensure_setup()


def test_directory_without_weights_is_missing_weights(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"0 SAM weight files"):
        SamInstanceLabeler({"checkpoint": str(tmp_path)}).ensure_setup()


# ----------------------------------------------------------------------------- sam_edge
def instance_member(shape: tuple[int, int], masks: list[np.ndarray]) -> bytes:
    insts = []
    for m in masks:
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        insts.append({"segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                      "bbox": mask_utils.toBbox(rle).tolist(), "area": int(m.sum()), "score": 1.0,
                      "stability_score": 1.0})
    return encode_json({"height": shape[0], "width": shape[1], "instances": insts})


def test_sam_edge_draws_instance_outlines():
    h, w = 40, 60
    a = np.zeros((h, w), bool)
    a[5:15, 10:30] = True                 # interior rectangle
    b = np.zeros((h, w), bool)
    b[20:, 40:] = True                    # touches the bottom/right image border
    img = np.zeros((h, w, 3), np.uint8)
    png = SamEdgeLabeler().label_batch([LabelInput("k", img, {"sam_instance": instance_member((h, w), [a, b])})])[0]
    edges = decode_png(png)
    assert edges.dtype == np.uint8 and edges.shape == (h, w) and set(np.unique(edges)) <= {0, 255}
    expect = np.zeros((h, w), bool)
    expect[5:15, 10:30] = True
    expect[6:14, 11:29] = False           # a 1-px ring inside rectangle a
    expect[20, 40:] = True                # b: only the sides facing the image, not the border
    expect[20:, 40] = True
    assert np.array_equal(edges == 255, expect)


def test_sam_edge_from_sam_instance_output(coffee_member):
    img, member = coffee_member
    edges = decode_png(SamEdgeLabeler().label_batch([LabelInput("c", img, {"sam_instance": member})])[0])
    assert edges.shape == img.shape[:2]
    masks = [decode(i["segmentation"]) for i in json.loads(member)["instances"]]
    union = np.any(masks, axis=0)
    assert (edges == 255).any() and not (edges[~union] == 255).any()


def test_sam_edge_refuses_instances_of_another_size(coffee_member):
    img, member = coffee_member
    with pytest.raises(ValueError, match="rgb is"):
        SamEdgeLabeler().label_batch([LabelInput("c", img[:50], {"sam_instance": member})])


# ----------------------------------------------------------------------------- through the label stage
def test_label_stage_sam_and_clip(fresh_photo_root, sam_dir, tmp_path):
    from prism4m.contract.members import decode_npy
    from prism4m.pipeline.label import label
    from prism4m.contract.store import DatasetStore

    clip_dir = fx.build_clip_tiny(tmp_path / "clip")
    cpu = {"num_gpus": 0, "num_cpus": 0.5}
    folders = ["sam_instance", "sam_edge", "clip"]
    configs = {"sam_instance": {"checkpoint": sam_dir, **LOW, **cpu}, "sam_edge": cpu,
               "clip": {"checkpoint": clip_dir, **cpu}}
    # one actor per level: on 2 cores, extra actors only add start-up (torch + libraries) time
    summary = label(fresh_photo_root, folders, configs, workers=1, show_progress=False)
    assert summary.ok, summary.failures
    store = DatasetStore(fresh_photo_root)
    rgb = store.ledger("rgb")
    for folder in folders:
        ledger = store.ledger(folder)
        assert sorted(ledger) == sorted(rgb)
        for shard, rec in ledger.items():
            assert not rec.get("invalid")
            # sam_edge has no model, but its input instances are random: flagged too
            assert rec["random_weights"] is True
            assert rec["model"]["random_weights"] is (folder != "sam_edge")
            if folder != "sam_edge":
                assert rec["model"]["weights_sha256"]
            rgb_members = store.read_shard("rgb", shard)
            members = store.read_shard(folder, shard)
            assert [m.key for m in members] == [m.key for m in rgb_members]
            for r, m in zip(rgb_members, members):
                hw = Image.open(io.BytesIO(r.data)).size[::-1]
                if folder == "sam_instance":
                    rec_m = json.loads(m.data)
                    assert (rec_m["height"], rec_m["width"]) == hw
                    assert all(decode(i["segmentation"]).shape == hw for i in rec_m["instances"])
                elif folder == "sam_edge":
                    assert decode_png(m.data).shape == hw
                else:
                    arr = decode_npy(m.data)
                    assert arr.dtype == np.float16 and arr.shape == (17, 32)
