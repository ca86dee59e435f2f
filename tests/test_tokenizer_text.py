"""WordPiece in ml-4m's layout (4M_FORMAT.md §4.2) and the sequence serializers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prism4m.tokenizers.registry import load_tokenizer
from prism4m.modality.serializers import (
    serialize_caption, serialize_color_palette, serialize_det, serialize_human_poses, serialize_metadata,
)
from prism4m.tokenizers.text import COCO_CLASSES, LayoutError, WordPieceTokenizer, train_wordpiece

CAPTIONS = [
    "A dog sleeping under a Dining Table in the kitchen.",
    "Two people riding bicycles down a busy street",
    "a zebra standing in tall grass next to a giraffe",
    "An airplane flying over snowy mountains",
] * 20


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(train_wordpiece(CAPTIONS, vocab_size=4600, min_frequency=1))


def test_special_token_ids(tok):
    for token, want in [("[PAD]", 0), ("[UNK]", 1), ("[SOS]", 2), ("[EOS]", 3), ("[S_0]", 4), ("[S_199]", 203),
                        ("v0=0", 204), ("v0=999", 1203), ("v1=0", 1204), ("v2=0", 2204), ("v3=999", 4203),
                        ("airplane", 4204), ("zebra", 4283)]:
        assert tok.token_to_id(token) == want, token
    tok.check_layout()


def test_example_encodings_from_the_format_reference(tok):
    assert tok.encode("v0=12 v1=34 v2=500 v3=999 dining table") == [216, 1238, 2704, 4203, 4231]
    assert tok.encode("[S_1]") == [5]
    # class tokens are normalised added tokens: case does not matter
    assert tok.encode("Dining Table") == [4231]
    # no post-processor: nothing is added around the text
    ids = tok.encode("a dog")
    assert 2 not in ids and 3 not in ids and 1 not in ids
    assert tok.decode(tok.encode("a zebra v0=5")) == "a zebra v0=5"


def test_learned_pieces_come_after_the_fixed_block(tok):
    assert len(COCO_CLASSES) == 80 and COCO_CLASSES == sorted(COCO_CLASSES)
    assert min(tok.encode("sleeping kitchen mountains")) >= 4284
    assert tok.vocab_size <= 4600


def test_loads_a_plain_tokenizer_json_and_checks_its_layout(tok, tmp_path):
    path = tmp_path / "text_tokenizer.json"
    path.write_text(tok.hf.to_str())
    loaded = load_tokenizer(str(path))
    assert loaded.encode("v3=999 zebra") == [4203, 4283]

    from tokenizers import Tokenizer, models
    bad = Tokenizer(models.WordPiece({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    (tmp_path / "bad.json").write_text(bad.to_str())
    with pytest.raises(LayoutError):
        load_tokenizer(str(tmp_path / "bad.json"))


def test_saved_directory_round_trip(tok, tmp_path):
    from prism4m.tokenizers.card import TokenizerCard

    tok.save(str(tmp_path / "text"), TokenizerCard(type="wordpiece", modality="text", vocab_size=0))
    loaded = load_tokenizer(str(tmp_path / "text"))
    assert loaded.card.vocab_size == tok.vocab_size
    assert loaded.encode("a dog v1=3") == tok.encode("a dog v1=3")


# ------------------------------------------------------------------ serializers
def test_det_filters_orders_and_quantises():
    det = {"instances": [
        {"boxes": [0.5, 0.5, 1.0, 1.0], "class_name": "dog", "score": 0.9},
        {"boxes": [0.1, 0.2, 0.3, 0.4], "class_name": "dining table", "score": 0.7},
        {"boxes": [0.0, 0.0, 0.2, 0.2], "class_name": "cat", "score": 0.59},  # below 0.6
    ]}
    assert serialize_det(det) == "v0=100 v1=200 v2=300 v3=400 dining table v0=500 v1=500 v2=999 v3=999 dog"
    # crop x 50..150 of a 100x200 image, then flip: the dog (x 100..200) ends in the left half
    s = serialize_det(det, crop_row=[0, 50, 100, 100, 1], image_hw=(100, 200))
    assert s == "v0=0 v1=500 v2=500 v3=999 dog v0=899 v1=200 v2=999 v3=400 dining table"
    # a box entirely outside the crop is dropped
    assert "table" not in serialize_det(det, crop_row=[0, 100, 100, 100, 0], image_hw=(100, 200))
    assert serialize_det({"instances": []}) == ""


def test_color_palette():
    value = [{str(k): [[10 * k, 20, 30]] * k for k in range(1, 8)}]
    assert serialize_color_palette(value) == "v1=7 " + " ".join(["v0=70 v0=20 v0=30"] * 7)
    s = serialize_color_palette(value, rng=np.random.default_rng(3))
    k = int(s.split()[0].split("=")[1])
    assert 1 <= k <= 7 and len(s.split()) == 1 + 3 * k


def test_metadata_binning():
    s = serialize_metadata({"original_width": 640, "brightness": 127.5, "n_humans": 1200,
                            "watermark_score": 0.7, "aesthetic_score": 5.0})
    assert s == "v1=0 v0=20 v1=5 v0=999 v1=10 v0=24 v1=19 v0=1 v1=20 v0=1"
    shuffled = serialize_metadata({"original_width": 640, "brightness": 127.5}, rng=np.random.default_rng(0))
    assert sorted(shuffled.split(" v1=")) != [] and set(shuffled.split()) == set("v1=0 v0=20 v1=10 v0=24".split())
    with pytest.raises(KeyError):
        serialize_metadata({"crowdedness": 3})


def test_human_poses():
    assert serialize_human_poses({}) == "none"
    person = {"bbox_xyxy": [[20, 10, 60, 90]], "pose_tokenized": [[3, 600] + [0] * 6],
              "pred_cam": [[0.0, 1.0, 25.0]],
              "pred_smpl_params": {"global_orient": [np.eye(3).tolist()], "betas": [[0.0] * 10]}}
    s = serialize_human_poses(person, image_hw=(100, 200))
    assert s.startswith("human v0=100 v1=100 v2=300 v3=899 pose v0=3 v1=88 ")
    assert "global v0=999 v0=500 v0=500" in s
    assert "camera v0=50 v0=100 v0=999" in s  # x clipped to 19 → 999
    assert s.endswith("shape " + " ".join(["v0=500"] * 10))


def test_caption_lists_are_indexed_by_crop():
    assert serialize_caption("a cat") == "a cat"
    assert serialize_caption(["first", {"caption": "second"}], crop_index=1) == "second"
    assert json.loads(json.dumps(serialize_caption([], crop_index=0))) == ""
