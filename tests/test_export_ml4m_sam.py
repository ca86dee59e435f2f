"""`prism4m export ROOT --format ml4m-sam`: the sam_instance@224 token folder in ml-4m's own
pickled-npy layout, read back the way ml-4m reads it.

The token members are built from known geometry with the same code the tokenize stage uses
(instances.crop_instances + member_bytes; the ids are made up: the export copies ids, it does
not compute them), committed to a copy of the photo root. The read-back follows ml-4m:
webdataset's tarfile_samples over the rgb and sam_instance tars zipped by position (keys must
agree), `np.load(BytesIO, allow_pickle=True)` (ml-4m's wds_decoder; pickle only in this test),
then SAMInstanceTokTransform's steps: entry `rand_aug_idx`, `token_ids.astype(int32)`,
`coords[0]` of each instance's points into `cv2.pointPolygonTest`, `bbox` as
`ymin, xmin, ymax, xmax`.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from prism4m.cli import app
from prism4m.contract.members import decode_npy
from prism4m.contract.store import DatasetStore, Member, content_hash
from prism4m.modality.instances import crop_instances, decode_label, member_bytes, read_member

FOLDER = "sam_instance@224"
CROP = 224


def label_record(h: int, w: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    rect = (xx >= int(0.3 * w)) & (xx < int(0.6 * w)) & (yy >= int(0.3 * h)) & (yy < int(0.6 * h))
    disc = np.hypot(xx - 0.8 * w, yy - 0.2 * h) < 0.1 * min(h, w)
    out = []
    for m in (rect, disc):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
    return json.dumps({"height": h, "width": w, "instances": out}).encode()


@pytest.fixture(scope="module")
def sam_token_root(photo_root, tmp_path_factory) -> tuple[str, str]:
    """A copy of the photo root with a committed sam_instance@224 folder; the first sample of
    shard 0 is an invalid record. Returns (root, that key)."""
    from PIL import Image

    root = str(tmp_path_factory.mktemp("ml4m_sam") / "ds")
    shutil.copytree(photo_root, root)
    store = DatasetStore(root)
    invalid_key = None
    for index in sorted(store.ledger("rgb")):
        rows = {m.key: decode_npy(m.data) for m in store.iter_shard("crop_settings", index)}
        members, errors = [], []
        for m in store.iter_shard("rgb", index):
            if invalid_key is None:
                invalid_key = m.key
                members.append(Member(m.key, "json", b""))
                errors.append({"key": m.key, "reason": "decode_error", "message": "test"})
                continue
            w, h = Image.open(io.BytesIO(m.data)).size
            inst = crop_instances(decode_label(label_record(h, w)), rows[m.key], CROP)
            tokens = (np.arange(len(inst.bboxes) * 16).reshape(-1, 16) * 7 + index) % 1024
            members.append(Member(m.key, "json", member_bytes(inst, tokens, CROP, 16)))
        producer = {"name": FOLDER, "kind": "tokenizer", "class": "test geometry", "version": "1", "config": {}}
        store.commit_unit(index, {FOLDER: members},
                          {FOLDER: {"producer": producer, "random_weights": True,
                                    "inputs": {"rgb": content_hash(store.ledger("rgb")[index])}}},
                          {FOLDER: errors})
    return root, invalid_key


def wds_samples(path: str):
    import webdataset as wds

    return list(wds.tarfile_samples([{"url": path}]))


def test_cli_writes_ml4m_sam_shards_read_back_as_ml4m_does(sam_token_root, tmp_path):
    import cv2

    root, invalid_key = sam_token_root
    out = str(tmp_path / "ml4m")
    result = CliRunner().invoke(app, ["export", root, "--format", "ml4m-sam", "-o", out])
    assert result.exit_code == 0, result.output
    assert "ml-4m sam_instance shards" in result.output
    summary = json.loads((tmp_path / "ml4m" / "_export.json").read_text())
    assert summary["format"] == "ml4m-sam/1" and summary["source_folder"] == FOLDER
    assert summary["invalid"] == 1 and all(p["random_weights"] for p in summary["parts"].values())

    store = DatasetStore(root)
    checked = 0
    for index in sorted(store.ledger("rgb")):
        name = f"shard-{index:06d}.tar"
        rgb_tar, sam_tar = f"{root}/rgb/{name}", f"{out}/sam_instance/{name}"
        source = {m.key: m.data for m in store.iter_shard(FOLDER, index)}
        crops = {m.key: decode_npy(m.data) for m in store.iter_shard("crop_settings", index)}
        rgb_samples, sam_samples = wds_samples(rgb_tar), wds_samples(sam_tar)
        assert len(rgb_samples) == len(sam_samples) == len(source)
        for r, s in zip(rgb_samples, sam_samples):  # multi_tarfile_samples: zipped, keys must agree
            assert r["__key__"] == s["__key__"] and set(s) == {"__key__", "__url__", "npy"}
            if s["__key__"] == invalid_key:
                assert s["npy"] == b""  # fails every decoder: ml-4m's warn_and_continue skips it
                continue
            sample = np.load(io.BytesIO(s["npy"]), allow_pickle=True)  # ml-4m's wds_decoder
            assert sample.dtype == object and sample.shape == (len(crops[s["__key__"]]),)
            want = read_member(source[s["__key__"]])
            for crop_idx, (entry, w) in enumerate(zip(sample, want)):  # rand_aug_idx = crop index
                assert set(entry) == {"points", "token_ids", "bbox"}
                tok = entry["token_ids"].astype(np.int32)  # SAMInstanceTokTransform.preprocess
                assert tok.dtype == np.int32 and tok.shape == (len(entry["bbox"]), 16)
                np.testing.assert_array_equal(tok, w["token_ids"])
                np.testing.assert_array_equal(entry["bbox"], w["bbox"])
                assert len(entry["points"]) == len(tok) >= 1  # the rectangle is in every crop
                for coords, bbox in zip(entry["points"], entry["bbox"]):
                    contour = coords[0]  # get_target_tokens: coords[0]
                    assert contour.ndim == 3 and contour.shape[1:] == (1, 2)
                    ymin, xmin, ymax, xmax = bbox.astype(np.int32)
                    assert 0 <= ymin < ymax <= CROP and 0 <= xmin < xmax <= CROP
                    centre = (int((xmin + xmax) // 2), int((ymin + ymax) // 2))  # (x, y) as ml-4m's query
                    if len(contour) >= 4 and (ymax - ymin) > 4 and (xmax - xmin) > 4:
                        assert cv2.pointPolygonTest(contour, centre, measureDist=True) >= 0
                    outside = (int(xmax) + 1, int(ymax) + 1)
                    assert cv2.pointPolygonTest(contour, outside, measureDist=True) < 0
            checked += 1
    assert checked == summary["rows"] - 1


def test_tar_members_are_key_npy_in_rgb_order_and_export_is_repeatable(sam_token_root, tmp_path):
    from prism4m import api

    root, _ = sam_token_root
    first = api.export(root, "ml4m-sam")  # default: ROOT/_export/ml4m
    assert first["out"].endswith("_export/ml4m/sam_instance")
    store = DatasetStore(root)
    for index in sorted(store.ledger("rgb")):
        name = f"shard-{index:06d}.tar"
        with tarfile.open(f"{first['out']}/{name}") as tar:
            names = tar.getnames()
        assert names == [f"{m.key}.npy" for m in store.iter_shard("rgb", index)]
    before = {p: open(f"{first['out']}/{p}", "rb").read() for p in first["parts"]}
    api.export(root, "ml4m-sam")
    assert before == {p: open(f"{first['out']}/{p}", "rb").read() for p in first["parts"]}


def test_root_without_sam_tokens_is_a_clear_error(photo_root):
    result = CliRunner().invoke(app, ["export", photo_root, "--format", "ml4m-sam"])
    assert result.exit_code != 0
    assert "no sam_instance token folder" in result.output
    bad = CliRunner().invoke(app, ["export", photo_root, "--format", "nope"])
    assert bad.exit_code != 0 and "ml4m-sam" in bad.output
