"""Pose tokens from human_poses labels: people drawn as COCO skeletons in a few postures, an
MLP tokenizer trained on their box-relative keypoints, ``human_poses@tok`` written by the
tokenize stage, and the ``pose`` group of ml-4m's human_poses sequence built from it."""

from __future__ import annotations

import io
import json
import re
import shutil
import zlib

import numpy as np
import pytest

from prism4m.contract.store import DatasetStore
from prism4m.modality.poses import pose_vectors
from prism4m.modality.samples import iter_shard_inputs
from prism4m.modality.serializers import serialize_human_poses
from prism4m.pipeline.tokenize import tokenize
from prism4m.pipeline.tokenizer_training import collect_texts, train_tokenizer
from prism4m.tokenizers import load_tokenizer
from prism4m.tokenizers.metrics import keypoint_error
from tokenize_fixtures import assert_nearest_codes, commit_labels, labelled_copy, rgb_sizes, tokenized_copy

FOLDER = "human_poses@tok"
TRAIN = {"steps": 300, "batch_size": 32, "codebook_size": 64, "lr": 2e-3, "warmup_steps": 10}

# COCO order: nose, eyes (l, r), ears (l, r), shoulders, elbows, wrists, hips, knees, ankles
POSTURES = {  # (upper arm, forearm, thigh, shin) angles in degrees from straight down, left and right side
    "standing": (10, 5, 3, 0),
    "arms_up": (170, 175, 3, 0),
    "t_pose": (90, 90, 5, 0),
    "walking": (25, 40, 25, -20),
}


def limb(start: np.ndarray, angle: float, length: float, side: float) -> np.ndarray:
    """End of a limb ``length`` long leaving ``start`` at ``angle`` from straight down, outwards on ``side``."""
    return start + length * np.array([side * np.sin(angle), np.cos(angle)])


def skeleton(posture: str, rng: np.random.Generator) -> np.ndarray:
    """(17, 2) keypoints of a 1.0-tall person at the origin (y down), joint angles jittered by ``rng``."""
    upper, fore, thigh, shin = (np.radians(a + rng.normal(0, 4)) for a in POSTURES[posture])
    head = np.array([0.0, 0.08])
    pts = {0: head, 1: head + [-0.03, -0.02], 2: head + [0.03, -0.02], 3: head + [-0.06, 0.0], 4: head + [0.06, 0.0]}
    for side, (sh, el, wr, hip, kn, an) in ((-1, (5, 7, 9, 11, 13, 15)), (1, (6, 8, 10, 12, 14, 16))):
        pts[sh] = np.array([0.12 * side, 0.2])
        pts[el] = limb(pts[sh], upper, 0.17, side)  # arms swing outwards on both sides
        pts[wr] = limb(pts[el], fore, 0.15, side)
        pts[hip] = np.array([0.08 * side, 0.52])
        stride = 1.0 if side < 0 else -0.5  # walking: one leg forward, the other back
        pts[kn] = limb(pts[hip], thigh * stride, 0.24, 1)
        pts[an] = limb(pts[kn], shin * stride, 0.23, 1)
    return np.stack([pts[i] for i in range(17)])


def person(kp_unit: np.ndarray, scores: np.ndarray, x: float, y: float, height: float) -> dict:
    """A labeler-format person: keypoints scaled to ``height`` px at (x, y), box around them."""
    kp = kp_unit * height + [x, y]
    pad = 0.05 * height
    box = [kp[:, 0].min() - pad, kp[:, 1].min() - pad, kp[:, 0].max() + pad, kp[:, 1].max() + pad]
    return {"bbox_xyxy": [float(v) for v in box], "score": 0.9,
            "keypoints": [[float(a), float(b), float(s)] for (a, b), s in zip(kp, scores)]}


def poses_record(key: str, h: int, w: int) -> dict:
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    persons = []
    for i in range(8):
        posture = list(POSTURES)[i % len(POSTURES)]
        kp = skeleton(posture, rng)
        scores = np.clip(rng.uniform(0.6, 1.0, 17) - (rng.random(17) < 0.15) * 0.5, 0, 1)
        height = rng.uniform(0.3, 0.8) * h
        persons.append(person(kp, scores, rng.uniform(0.2, 0.8) * w, rng.uniform(0.05, 0.3) * h, height))
    return {"persons": persons}


@pytest.fixture(scope="module")
def poses_root(photo_root, tmp_path_factory) -> str:
    dst = str(tmp_path_factory.mktemp("poses_root") / "ds")
    return labelled_copy(photo_root, dst, "human_poses", lambda key, h, w: json.dumps(poses_record(key, h, w)).encode())


@pytest.fixture(scope="module")
def pose_tokenizer(poses_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tok") / "pose")
    train_tokenizer(poses_root, "human_poses", out, TRAIN, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenized_root(poses_root, pose_tokenizer, tmp_path_factory) -> str:
    return tokenized_copy(poses_root, str(tmp_path_factory.mktemp("poses_tok") / "ds"), pose_tokenizer, FOLDER)


def test_a_root_without_people_where_training_needs_them_is_a_one_line_error(photo_root, tmp_path):
    """No person in the held-out (last) shard, then none at all: a UserError naming the folder
    and shards, not numpy's "need at least one array to concatenate" after training."""
    from prism4m.errors import UserError

    last_empty = labelled_copy(photo_root, str(tmp_path / "a"), "human_poses",
                               lambda key, h, w: json.dumps(poses_record(key, h, w)).encode())
    store = DatasetStore(last_empty)
    last = max(store.ledger("human_poses"))
    assert last > 0  # a held-out shard of its own
    keys = [m.key for m in store.read_shard("human_poses", last)]
    commit_labels(store, last, "human_poses", {k: b"{}" for k in keys})  # nobody in the last shard
    with pytest.raises(UserError, match=rf"human_poses has no person in the held-out shard\(s\) \[{last}\]"):
        train_tokenizer(last_empty, "human_poses", str(tmp_path / "tok_a"), {**TRAIN, "steps": 1}, progress=False)
    nobody = labelled_copy(photo_root, str(tmp_path / "b"), "human_poses", lambda key, h, w: b"{}")
    with pytest.raises(UserError, match=r"human_poses has no person in shard\(s\) \[0"):
        train_tokenizer(nobody, "human_poses", str(tmp_path / "tok_b"), {**TRAIN, "steps": 1}, progress=False)


def test_card_is_an_8_token_pose_tokenizer_with_held_out_error(pose_tokenizer):
    card = json.loads(open(f"{pose_tokenizer}/card.json").read())
    assert card["type"] == "mlp_pose" and card["modality"] == "human_poses" and card["token_folder"] == FOLDER
    assert card["token_grid"] == [1, 8] and card["n_tokens"] is None and card["vocab_size"] == 64
    assert card["architecture"]["in_channels"] == 51
    assert card["training"]["train_shards"] == [0] and card["training"]["held_out_shards"] == [1]
    assert card["training"]["train_crops"] == 4 * 8  # one vector per person, not per crop
    assert 0 < card["metrics"]["held_out"]["keypoint_error_box"] < 1
    assert card["codebook"]["codes_used"] >= 2


def test_members_keep_the_labels_and_add_tokens_per_person(tokenized_root, pose_tokenizer):
    store = DatasetStore(tokenized_root)
    tok = load_tokenizer(pose_tokenizer)
    for index in sorted(store.ledger("rgb")):
        rec = store.ledger(FOLDER)[index]
        assert rec["producer"]["card_hash"] == tok.card.card_hash()
        assert set(rec["inputs"]) == {"rgb", "crop_settings", "human_poses"}
        assert "vocab_size" not in rec["producer"] and rec["producer"]["tokens_per_instance"] == 8
        members = store.read_shard(FOLDER, index)
        labels = store.read_shard("human_poses", index)
        sizes = rgb_sizes(store, index)
        assert [m.key for m in members] == [m.key for m in labels] == list(sizes)
        for m, label in zip(members, labels):
            doc, lab = json.loads(m.data), json.loads(label.data)
            assert (doc["height"], doc["width"]) == sizes[m.key]
            assert len(doc["persons"]) == len(lab["persons"]) == 8
            for p, q in zip(doc["persons"], lab["persons"]):
                assert {k: v for k, v in p.items() if k != "pose_tokenized"} == q
                assert len(p["pose_tokenized"]) == 8 and all(0 <= t < 64 for t in p["pose_tokenized"])
            # the stage's ids are the tokenizer's on the same persons (up to near-tied codes: the
            # stage batches other samples' persons with these)
            stage_ids = [p["pose_tokenized"] for p in doc["persons"]]
            assert_nearest_codes(tok, tok.prepare(lab, np.zeros((1, 5)), sizes[m.key]), stage_ids)


def test_the_same_pose_gets_the_same_tokens_wherever_and_however_large(pose_tokenizer):
    tok = load_tokenizer(pose_tokenizer)
    rng = np.random.default_rng(7)
    kp, scores = skeleton("arms_up", rng), rng.uniform(0.6, 1.0, 17)
    record = {"persons": [person(kp, scores, 50, 20, 60), person(kp, scores, 300, 90, 240)]}
    ids = tok.encode(tok.prepare(record, np.zeros((1, 5)), (400, 500)))
    assert ids[0].tolist() == ids[1].tolist()
    other = {"persons": [person(skeleton("t_pose", rng), scores, 50, 20, 60)]}
    assert tok.encode(tok.prepare(other, np.zeros((1, 5)), (400, 500)))[0].tolist() != ids[0].tolist()


def test_poses_round_trip_closer_than_the_mean_pose(poses_root, pose_tokenizer):
    tok = load_tokenizer(pose_tokenizer)
    store = DatasetStore(poses_root)
    held = [s for s in iter_shard_inputs(store, tok.spec, 1)]
    x = np.concatenate([pose_vectors(s.value) for s in held])
    mean, std = tok.input_stats
    recon = tok.decode(tok.encode((x - mean) / std)) * std + mean
    err = keypoint_error(x, recon)
    baseline = keypoint_error(x, np.repeat(mean[None], len(x), axis=0))
    assert err < 0.6 * baseline, (err, baseline)


def test_sequence_has_the_pose_group_with_a_tokenizer_and_not_without(tokenized_root):
    store = DatasetStore(tokenized_root)
    member = store.read_shard(FOLDER, 0)[0]
    label = store.read_shard("human_poses", 0)[0]
    row = np.load(io.BytesIO(store.read_shard("crop_settings", 0)[0].data), allow_pickle=False)[1]
    doc = json.loads(member.data)
    text = serialize_human_poses(doc, crop_row=row)  # image size from the member itself
    people = text.split("human ")[1:]
    assert len(people) >= 1
    tokens = [" ".join(f"v0={t}" if t < 512 else f"v1={t - 512}" for t in p["pose_tokenized"]) for p in doc["persons"]]
    for chunk in people:
        assert re.search(r"pose ((?:v[01]=\d+ ?){8})", chunk).group(1).strip() in tokens
    # no tokenizer: the label alone gives boxes and no pose group
    plain = serialize_human_poses(json.loads(label.data), crop_row=row, image_hw=(doc["height"], doc["width"]))
    assert "pose" not in plain and plain.count("human ") == len(people)
    # the WordPiece training text includes the pose groups
    assert any(" pose v" in t for t in collect_texts(store))


def test_invalid_and_malformed_records_become_invalid_entries(tokenized_root, pose_tokenizer, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(tokenized_root, root)
    store = DatasetStore(root)
    data = {m.key: m.data for m in store.read_shard("human_poses", 0)}
    empty_key, bad_key, none_key = list(data)[:3]
    data[empty_key] = b""
    broken = json.loads(data[bad_key])
    broken["persons"][0]["keypoints"] = broken["persons"][0]["keypoints"][:15]
    data[bad_key] = json.dumps(broken).encode()
    data[none_key] = b"{}"  # no person in the image (ml-4m's and our labeler's empty record)
    commit_labels(store, 0, "human_poses", data, [{"key": empty_key, "reason": "label_exception", "message": "test"}])
    summary = tokenize(root, [pose_tokenizer], workers=1, show_progress=False)
    assert summary.ok and summary.stale == {FOLDER: 1}
    out = {m.key: m for m in store.read_shard(FOLDER, 0)}
    assert out[empty_key].data == b"" and out[bad_key].data == b""
    lines = {x["key"]: x for x in map(json.loads, open(store.errors_path(FOLDER, 0)).read().splitlines())}
    assert lines[empty_key]["reason"] == "input_invalid"
    assert lines[bad_key]["reason"] == "decode_error" and "17 keypoints" in lines[bad_key]["message"]
    empty = json.loads(out[none_key].data)
    assert empty["persons"] == [] and serialize_human_poses(empty) == "none"
