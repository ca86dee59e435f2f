"""transformers labelers (depth, normal, dinov2, semseg_coco, det) and their shared loading.

Each labeler loads a tiny random-weight model that the test saved with save_pretrained — the
same loading path as a real checkpoint. Expected properties come from the formats in
4M_FORMAT.md and the labelers' docstrings, never from re-running the code under test.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

import model_fixtures_hf as fx
from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.labelers.depth import DepthLabeler, encode_depth_png, quantise_depth, read_depth_normalisation
from prism4m.labelers.detection import DetectionLabeler
from prism4m.labelers.dinov2 import Dinov2Labeler
from prism4m.contract.members import decode_npy
from prism4m.labelers.hf import load_hf_model
from prism4m.labelers.normal import NormalLabeler
from prism4m.labelers.registry import get_labeler_class
from prism4m.labelers.semseg import SemsegCocoLabeler
from prism4m.labelers.weights import weights_digest

HF_LABELERS = ["depth", "normal", "dinov2", "semseg_coco", "det"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("hf_ckpts")
    return {
        "depth": fx.build_depth_anything(base / "depth"),
        "normal": fx.build_dpt_normals(base / "normal"),
        "dinov2": fx.build_dinov2(base / "dinov2"),
        "semseg_coco": fx.build_mask2former(base / "semseg"),
        "det": fx.build_detr(base / "det"),
        "det_rtdetr": fx.build_rtdetr(base / "rtdetr"),
    }


def photos() -> list[np.ndarray]:
    """Real photos of three different shapes (landscape, landscape, portrait)."""
    return [data.astronaut()[:300:2, :400:2], data.chelsea()[::3, ::3], data.coffee()[::4, ::4].transpose(1, 0, 2)]


def inputs(images) -> list[LabelInput]:
    return [LabelInput(f"k{i}", im) for i, im in enumerate(images)]


def png(member: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(member)))


# ----------------------------------------------------------------------------- shared loading
@pytest.mark.parametrize("name", HF_LABELERS)
def test_no_checkpoint_fails_at_setup_naming_the_config_key(name):
    lab = get_labeler_class(name)({})
    with pytest.raises(MissingWeightsError, match=rf"labelers\.{name}\.checkpoint"):
        lab.ensure_setup()


def test_missing_path_empty_dir_and_offline_hub_id_are_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        DepthLabeler({"checkpoint": str(tmp_path / "nope")}).ensure_setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="no config.json"):
        DepthLabeler({"checkpoint": str(tmp_path / "empty")}).ensure_setup()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="hub id"):
        DepthLabeler({"checkpoint": "prism4m-tests/not-a-real-repo"}).ensure_setup()


def test_extra_checkpoint_key_is_named_in_the_error():
    with pytest.raises(MissingWeightsError, match=r"labelers\.human_poses\.detector_checkpoint"):
        load_hf_model("human_poses", None, "PekingU/rtdetr_r50vd_coco_o365", "AutoModelForObjectDetection",
                      config_key="detector_checkpoint")


@pytest.mark.parametrize("name", ["depth", "det"])
def test_provenance_says_random_weights_and_names_the_model(ckpts, name):
    lab = get_labeler_class(name)({"checkpoint": ckpts[name]})
    prov = lab.model_provenance()
    assert prov["random_weights"] is True
    assert prov["model_id"] == ckpts[name]
    assert prov["weights_sha256"] == weights_digest(__import__("pathlib").Path(ckpts[name]))
    assert prov["libraries"]["transformers"] and prov["libraries"]["torch"]
    assert prov["model_class"] == type(lab.model).__name__
    assert not lab.model.training


# ----------------------------------------------------------------------------- depth
def test_depth_is_16bit_at_rgb_size_with_recorded_normalisation(ckpts):
    images = photos()
    far = DepthLabeler({"checkpoint": ckpts["depth"]})
    near = DepthLabeler({"checkpoint": ckpts["depth"], "larger": "nearer"})
    batch = inputs(images)
    for im, m_far, m_near, raw in zip(images, far.label_batch(batch), near.label_batch(batch),
                                      far.predict_maps(batch)):
        d = png(m_far)
        assert d.dtype == np.uint16 and d.shape == im.shape[:2]
        assert d.min() == 0 and d.max() == 65535  # per-image min-max uses the full range
        # the two conventions are exact flips of each other
        assert np.array_equal(d.astype(np.int64) + png(m_near), np.full(d.shape, 65535))
        meta = read_depth_normalisation(m_far)
        assert meta["model_output"] == "disparity" and meta["larger"] == "farther"
        # the recorded scale/offset recover the raw prediction (disparity, flipped to farther)
        recovered = meta["p_min"] + (1 - d / 65535) * (meta["p_max"] - meta["p_min"])
        assert np.allclose(recovered, raw, atol=(meta["p_max"] - meta["p_min"]) / 30000)


def test_depth_mixed_shapes_in_one_batch_match_single_images(ckpts):
    lab = DepthLabeler({"checkpoint": ckpts["depth"]})
    images = photos()
    batch = inputs(images + [images[0][::-1]])  # mixed shapes, and two of the same shape
    together = lab.label_batch(batch)
    for s, m in zip(batch, together):
        alone = png(lab.label_batch([s])[0]).astype(np.int64)
        assert np.abs(png(m) - alone).max() <= 2


def test_quantise_constant_prediction_is_zero():
    q, lo, hi = quantise_depth(np.full((4, 5), 3.5, np.float32), flip=True)
    assert q.dtype == np.uint16 and not q.any() and lo == hi == 3.5


# ----------------------------------------------------------------------------- normal
def decoded_normals(member: bytes) -> np.ndarray:
    return png(member).astype(np.float64) / 127.5 - 1.0


def test_normal_network_writes_unit_vectors_at_rgb_size(ckpts):
    images = photos()
    lab = NormalLabeler({"checkpoint": ckpts["normal"]})
    for im, m in zip(images, lab.label_batch(inputs(images))):
        rgb = png(m)
        assert rgb.dtype == np.uint8 and rgb.shape == (*im.shape[:2], 3)
        assert np.allclose(np.linalg.norm(decoded_normals(m), axis=-1), 1.0, atol=0.02)
    assert lab.model_provenance()["random_weights"] is True


def ramp(h: int, w: int, axis: int, larger: str = "farther") -> bytes:
    """A 16-bit depth member of a plane: farther to the right (axis 1) or towards the top (axis 0)."""
    if axis == 1:
        z = np.tile(np.linspace(0, 1, w), (h, 1))
    else:
        z = np.tile(np.linspace(1, 0, h)[:, None], (1, w))
    if larger == "nearer":
        z = 1 - z
    q = np.round(z * 65535).astype(np.uint16)
    return encode_depth_png(q, {"p_min": 0.0, "p_max": 1.0, "model_output": "depth", "larger": larger})


def test_normal_from_depth_geometry_and_convention():
    lab = NormalLabeler({"method": "from_depth"})
    assert lab.requires == ("depth",) and NormalLabeler.requires == ()
    assert "geometric fallback" in lab.producer()["method"]
    assert lab.model_provenance()["random_weights"] is False
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    wall, floor, wall_near, flat = lab.label_batch([
        LabelInput("a", img, {"depth": ramp(h, w, 1)}),                    # left corridor wall
        LabelInput("b", img, {"depth": ramp(h, w, 0)}),                    # floor
        LabelInput("c", img, {"depth": ramp(h, w, 1, larger="nearer")}),   # same wall, other storage
        LabelInput("d", img, {"depth": encode_depth_png(np.full((h, w), 7, np.uint16), {})}),
    ])
    inner = (slice(5, -5), slice(5, -5))
    n_wall, n_floor = decoded_normals(wall)[inner], decoded_normals(floor)[inner]
    assert (n_wall[..., 0] > 0.2).all() and np.abs(n_wall[..., 1]).max() < 0.05   # faces right
    assert (n_floor[..., 1] > 0.2).all() and np.abs(n_floor[..., 0]).max() < 0.05  # faces up
    assert (n_wall[..., 2] > 0).all() and (n_floor[..., 2] > 0).all()             # towards viewer
    assert np.array_equal(png(wall_near), png(wall))  # the recorded convention is honoured
    assert (png(flat) == (128, 128, 255)).all()       # fronto-parallel
    assert png(wall).shape == (h, w, 3)


def test_normal_from_depth_rejects_missing_or_misaligned_depth():
    lab = NormalLabeler({"method": "from_depth"})
    with pytest.raises(KeyError):
        lab.label_batch([LabelInput("a", np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(ValueError, match="not aligned"):
        lab.label_batch([LabelInput("a", np.zeros((8, 8, 3), np.uint8), {"depth": ramp(9, 8, 0)})])


# ----------------------------------------------------------------------------- dinov2
def test_dinov2_features_layout_and_centre_square(ckpts):
    lab = Dinov2Labeler({"checkpoint": ckpts["dinov2"], "input_size": 56})
    wide = data.astronaut()[100:300, :400:1][:, :300]  # 200×300
    other_sides = wide.copy()
    other_sides[:, :50] = 0
    other_sides[:, -50:] = 255  # outside the centred 200×200 square
    inside = wide.copy()
    inside[90:110, 140:160] = 0
    a, b, c = (decode_npy(m) for m in lab.label_batch(inputs([wide, other_sides, inside])))
    grid = 56 // 14
    assert a.dtype == np.float16 and a.shape == (1 + grid * grid, lab.model.config.hidden_size)
    assert np.array_equal(a, b)        # only the centred square is seen
    assert not np.array_equal(a, c)
    # row 0 is CLS after the final layernorm: zero mean / unit variance across channels
    # up to the layernorm's affine parameters, which are identity at initialisation
    assert abs(float(a[0].astype(np.float32).mean())) < 0.05


def test_dinov2_input_size_must_be_a_multiple_of_the_patch(ckpts):
    with pytest.raises(ValueError, match="multiple"):
        Dinov2Labeler({"checkpoint": ckpts["dinov2"], "input_size": 50}).ensure_setup()


# ----------------------------------------------------------------------------- semseg_coco
def test_semseg_class_ids_at_rgb_size(ckpts):
    images = photos()
    permissive = SemsegCocoLabeler({"checkpoint": ckpts["semseg_coco"], "threshold": 0.0, "mask_threshold": 0.0,
                                    "overlap_mask_area_threshold": 0.0})
    strict = SemsegCocoLabeler({"checkpoint": ckpts["semseg_coco"]})
    for im, m_perm, m_strict in zip(images, permissive.label_batch(inputs(images)),
                                    strict.label_batch(inputs(images))):
        for m in (m_perm, m_strict):
            cls = png(m)
            assert cls.dtype == np.uint8 and cls.shape == im.shape[:2]
            assert set(np.unique(cls)) <= set(range(133)) | {255}
        assert (png(m_perm) < 133).any()       # segments found → class ids
        assert (png(m_strict) == 255).all()   # random weights pass no 0.5 score: "no class"


def test_semseg_padded_batch_matches_single_images(ckpts):
    lab = SemsegCocoLabeler({"checkpoint": ckpts["semseg_coco"], "threshold": 0.0, "mask_threshold": 0.0,
                             "overlap_mask_area_threshold": 0.0})
    images = photos()
    batch = inputs(images + [images[0][::-1]])  # mixed shapes, and two of the same shape
    for s, m in zip(batch, lab.label_batch(batch)):
        alone = png(lab.label_batch([s])[0])
        assert (png(m) == alone).mean() > 0.98


# ----------------------------------------------------------------------------- det
@pytest.mark.parametrize("detector", ["det", "det_rtdetr"])
def test_detections_sorted_normalised_named_and_thresholded(ckpts, detector):
    images = photos()
    names = set(fx.COCO_NAMES.values())
    everything = DetectionLabeler({"checkpoint": ckpts[detector], "threshold": 0.0})
    confident = DetectionLabeler({"checkpoint": ckpts[detector], "threshold": 0.5, "max_instances": 3})
    for m_all, m_conf in zip(everything.label_batch(inputs(images)), confident.label_batch(inputs(images))):
        all_inst = json.loads(m_all)["instances"]
        assert len(all_inst) == 10  # one per query of the tiny detector, none dropped at threshold 0
        scores = [d["score"] for d in all_inst]
        assert scores == sorted(scores, reverse=True)
        for d in all_inst:
            x0, y0, x1, y1 = d["boxes"]
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            assert d["class_name"] in names and 0 <= d["score"] <= 1
        conf = json.loads(m_conf)["instances"]
        assert conf == [d for d in all_inst if d["score"] >= 0.5][:3]


def test_det_boxes_do_not_depend_on_image_resolution(ckpts):
    lab = DetectionLabeler({"checkpoint": ckpts["det"], "threshold": 0.0})
    small = data.chelsea()[::2, ::2]
    big = np.asarray(Image.fromarray(small).resize((small.shape[1] * 2, small.shape[0] * 2)))
    a, b = (json.loads(m)["instances"] for m in lab.label_batch(inputs([small, big])))
    assert [d["class_name"] for d in a][:3] == [d["class_name"] for d in b][:3]
    assert np.allclose([d["boxes"] for d in a], [d["boxes"] for d in b], atol=0.05)


def test_det_drops_unnamed_gap_ids():
    import torch

    lab = DetectionLabeler({"threshold": 0.1})
    result = {"scores": torch.tensor([0.9, 0.8, 0.05]), "labels": torch.tensor([12, 1, 1]),
              "boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 1.3, 0.6], [0, 0, 1, 1]])}
    out = lab.instances(result, {1: "person", 12: "N/A"})
    assert out == [{"boxes": [0.2, 0.2, 1.0, 0.6], "class_name": "person", "score": 0.8}]


# ----------------------------------------------------------------------------- through the label stage
def test_label_stage_writes_aligned_provenanced_shards(fresh_photo_root, ckpts):
    from prism4m.contract.members import decode_npy
    from prism4m.pipeline.label import label
    from prism4m.contract.store import DatasetStore

    cpu = {"num_gpus": 0, "num_cpus": 0.5}
    configs = {
        "depth": {"checkpoint": ckpts["depth"], **cpu},
        "normal": {"method": "from_depth", **cpu},
        "dinov2": {"checkpoint": ckpts["dinov2"], "input_size": 56, **cpu},
        "semseg_coco": {"checkpoint": ckpts["semseg_coco"], **cpu},
        "det": {"checkpoint": ckpts["det"], **cpu},
    }
    # one actor per level: each model is loaded once (2 cores)
    summary = label(fresh_photo_root, HF_LABELERS, configs, workers=1, show_progress=False)
    assert summary.ok, summary.failures
    store = DatasetStore(fresh_photo_root)
    rgb = store.ledger("rgb")
    for folder in HF_LABELERS:
        ledger = store.ledger(folder)
        assert sorted(ledger) == sorted(rgb)
        for shard, rec in ledger.items():
            # normal (from_depth) has no weights of its own, but its input depth is random:
            # the record says so, so nothing passes derived labels off as real.
            assert rec["model"]["random_weights"] is (folder != "normal")
            assert rec["random_weights"] is True
            assert not rec.get("invalid")
            rgb_members = store.read_shard("rgb", shard)
            members = store.read_shard(folder, shard)
            assert [m.key for m in members] == [m.key for m in rgb_members]
            for r, m in zip(rgb_members, members):
                size = Image.open(io.BytesIO(r.data)).size[::-1]
                if folder in ("depth", "normal", "semseg_coco"):
                    assert png(m.data).shape[:2] == size
                elif folder == "dinov2":
                    assert decode_npy(m.data).shape == (17, 32)
                else:
                    assert "instances" in json.loads(m.data)
    # re-running is a no-op (resume): nothing planned
    again = label(fresh_photo_root, HF_LABELERS, configs, show_progress=False)
    assert not again.planned
