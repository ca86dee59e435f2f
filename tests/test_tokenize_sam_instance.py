"""SAM instance tokens on a real ingested root (photo_root) with sam_instance labels drawn
from known geometry: mask tokenizer training, the tokenize stage's members (aligned keys,
boxes where the crop puts them, hflip), round trip, determinism, invalid records, the
sequence ml-4m builds from them."""

from __future__ import annotations

import io
import json
import math
import re
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from prism4m.contract.store import DatasetStore
from prism4m.modality.instances import MIN_AREA, crop_instances, decode_label, read_member
from prism4m.modality.samples import iter_shard_inputs
from prism4m.modality.serializers import serialize_sam_instance
from prism4m.pipeline.export import export_parquet
from prism4m.pipeline.tokenize import tokenize
from prism4m.pipeline.tokenizer_training import collect_texts, train_tokenizer
from prism4m.tokenizers import load_tokenizer
from prism4m.tokenizers.metrics import mask_iou
from tokenize_fixtures import commit_labels, labelled_copy, rgb_sizes, tokenized_copy

CROP = 224
FOLDER = f"sam_instance@{CROP}"
TRAIN = {"steps": 150, "batch_size": 32, "codebook_size": 64, "lr": 2e-3, "warmup_steps": 10,
         "max_eval_crops": 256}


# ---------------------------------------------------------------------------------- labels
def rect_box(h: int, w: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), max exclusive: the rectangle every sample has."""
    return int(0.30 * w), int(0.25 * h), int(0.55 * w), int(0.50 * h)


def shapes(h: int, w: int) -> dict[str, np.ndarray]:
    """Instance masks at known places; the 1-pixel one is too small for any crop."""
    yy, xx = np.mgrid[0:h, 0:w]
    s = min(h, w)
    x0, y0, x1, y1 = rect_box(h, w)
    rect = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    tx0, ty0, side = int(0.58 * w), int(0.55 * h), int(0.3 * s)
    triangle = (xx >= tx0) & (yy < ty0 + side) & (xx - tx0 <= yy - ty0)  # lower-left half of a square
    r = np.hypot(xx - 0.25 * w, yy - 0.72 * h)
    ring = (r < 0.16 * s) & (r >= 0.09 * s)
    disc = np.hypot(xx - 0.78 * w, yy - 0.25 * h) < 0.12 * s
    tiny = (xx == 2) & (yy == 2)
    return {"rect": rect, "triangle": triangle, "ring": ring, "disc": disc, "tiny": tiny}


def label_record(h: int, w: int) -> dict:
    """A sam_instance member as the labeler writes it (DATASET.md)."""
    out = []
    for m in shapes(h, w).values():
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        out.append({"segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                    "bbox": [int(v) for v in mask_utils.toBbox(rle)], "area": int(m.sum()),
                    "score": 0.95, "stability_score": 0.97})
    return {"height": h, "width": w, "instances": out}


@pytest.fixture(scope="module")
def sam_root(photo_root, tmp_path_factory) -> str:
    dst = str(tmp_path_factory.mktemp("sam_root") / "ds")
    return labelled_copy(photo_root, dst, "sam_instance", lambda key, h, w: json.dumps(label_record(h, w)).encode())


@pytest.fixture(scope="module")
def mask_tokenizer(sam_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tok") / "sam")
    train_tokenizer(sam_root, "sam_instance", out, TRAIN, progress=False)
    return out


@pytest.fixture(scope="module")
def tokenized_root(sam_root, mask_tokenizer, tmp_path_factory) -> str:
    return tokenized_copy(sam_root, str(tmp_path_factory.mktemp("sam_tok") / "ds"), mask_tokenizer, FOLDER)


def members_with_rows(store: DatasetStore, index: int):
    for m, c in zip(store.read_shard(FOLDER, index), store.read_shard("crop_settings", index)):
        yield m, np.load(io.BytesIO(c.data), allow_pickle=False)


def expected_rect_bbox(row, hw) -> list[float] | None:
    """[ymin, xmin, ymax, xmax] of the rectangle in the crop's 224 px, or None if it leaves it."""
    top, left, h, w, flip = (int(v) for v in row)
    x0, y0, x1, y1 = rect_box(*hw)
    xs = np.clip([(x0 - left) * CROP / w, (x1 - left) * CROP / w], 0, CROP)
    ys = np.clip([(y0 - top) * CROP / h, (y1 - top) * CROP / h], 0, CROP)
    if (xs[1] - xs[0]) * (ys[1] - ys[0]) < 4 * MIN_AREA:
        return None
    if flip:
        xs = CROP - xs[::-1]
    return [ys[0], xs[0], ys[1], xs[1]]


# ---------------------------------------------------------------------------------- tests
def test_card_records_held_out_iou_and_codebook_usage(mask_tokenizer):
    card = json.loads(open(f"{mask_tokenizer}/card.json").read())
    assert card["type"] == "vq_mask" and card["modality"] == "sam_instance" and card["token_folder"] == FOLDER
    assert card["token_grid"] == [4, 4] and card["n_tokens"] is None and card["vocab_size"] == 64
    assert card["input_size"] == CROP and card["normalisation"]["mask_size"] == 64
    assert card["training"]["train_shards"] == [0] and card["training"]["held_out_shards"] == [1]
    held = card["metrics"]["held_out"]
    assert 0.0 < held["mask_iou"] <= 1.0 and card["metrics"]["held_out_crops"] > 0
    assert card["codebook"]["codes_used"] >= 2 and card["codebook"]["perplexity"] > 1


def test_members_are_aligned_with_rgb_and_hold_every_crop(tokenized_root, mask_tokenizer):
    store = DatasetStore(tokenized_root)
    tok = load_tokenizer(mask_tokenizer)
    for index in sorted(store.ledger("rgb")):
        rec = store.ledger(FOLDER)[index]
        assert rec["producer"]["card_hash"] == tok.card.card_hash() and rec["producer"]["kind"] == "tokenizer"
        assert set(rec["inputs"]) == {"rgb", "crop_settings", "sam_instance"} and rec["invalid"] == []
        # the folder's vocabulary is the text tokenizer's: the codebook size must not pose as it
        assert "vocab_size" not in rec["producer"] and rec["producer"]["instance_codes"] == 64
        members = store.read_shard(FOLDER, index)
        assert [m.key for m in members] == [m.key for m in store.iter_shard("rgb", index)]
        for m, rows in members_with_rows(store, index):
            assert m.ext == "json"
            crops = read_member(m.data)
            assert len(crops) == len(rows)
            for crop, row in zip(crops, rows):
                assert crop["crop"].tolist() == row.tolist()
                n = len(crop["bbox"])
                assert 1 <= n <= 4  # the 1-pixel instance never survives a crop
                assert crop["token_ids"].shape == (n, 16) and len(crop["points"]) == n
                assert crop["token_ids"].min() >= 0 and crop["token_ids"].max() < 64
                b = crop["bbox"]
                assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all() and b.min() >= 0 and b.max() <= CROP


def test_rectangle_box_lands_where_the_crop_puts_it(tokenized_root):
    store = DatasetStore(tokenized_root)
    flipped = checked = 0
    for index in sorted(store.ledger("rgb")):
        sizes = rgb_sizes(store, index)
        for m, rows in members_with_rows(store, index):
            for crop, row in zip(read_member(m.data), rows):
                want = expected_rect_bbox(row, sizes[m.key])
                if want is None:
                    continue
                err = np.abs(crop["bbox"] - np.asarray(want)).max(axis=1)
                assert err.min() <= 1.5, (m.key, row.tolist(), want, crop["bbox"].tolist())
                # its contour is the rectangle's outline (corners at the box's first/last pixels)
                pts = crop["points"][int(err.argmin())][0].reshape(-1, 2)
                assert abs(pts[:, 0].min() - want[1]) <= 1.5 and abs(pts[:, 1].max() + 1 - want[2]) <= 1.5
                checked += 1
                flipped += int(row[4])
    assert checked >= 16 and flipped >= 1  # hflip rows were among the ones checked


def test_flip_mirrors_boxes_of_the_same_crop():
    hw = (120, 200)
    label = decode_label(json.dumps(label_record(*hw)).encode())
    plain = crop_instances(label, np.array([[10, 30, 100, 150, 0]]), CROP)
    mirror = crop_instances(label, np.array([[10, 30, 100, 150, 1]]), CROP)
    assert plain.counts == mirror.counts == [4]
    expect = plain.bboxes.copy()
    expect[:, [1, 3]] = CROP - plain.bboxes[:, [3, 1]]
    assert np.array_equal(mirror.bboxes, expect)
    assert np.array_equal(mirror.masks, plain.masks[..., ::-1])  # the box contents mirror too


def test_instances_leaving_the_crop_are_dropped():
    hw = (120, 200)
    label = decode_label(json.dumps(label_record(*hw)).encode())
    # the top-left quarter holds the rectangle (x 60..110, y 30..60) only in part and no other shape
    got = crop_instances(label, np.array([[0, 0, 50, 80, 0]]), CROP)
    x0, y0, _, _ = rect_box(*hw)
    assert got.counts == [1]
    assert np.allclose(got.bboxes[0], [y0 * CROP / 50, x0 * CROP / 80, CROP, CROP], atol=1.5)


def test_masks_round_trip_through_the_tokens(sam_root, mask_tokenizer):
    tok = load_tokenizer(mask_tokenizer)
    store = DatasetStore(sam_root)
    x = np.concatenate([tok.prepare(s.value, s.rows, s.image_hw) for s in iter_shard_inputs(store, tok.spec, 1)])
    assert x.shape[1:] == (1, 64, 64) and set(np.unique(x)) == {0.0, 1.0}
    recon = tok.decode(tok.encode(x))
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1
    # Chance: a mask filling its box (IoU = the share of the box the shape covers, ~0.7 here)
    iou = mask_iou(recon, x)["mask_iou"]
    baseline = mask_iou(np.ones_like(x), x)["mask_iou"]
    assert iou > baseline + 0.1, (iou, baseline)


def test_tokens_are_identical_across_runs(tokenized_root, mask_tokenizer, tmp_path):
    again = tokenize(tokenized_root, [mask_tokenizer], workers=1, show_progress=False)
    assert again.planned == {} and again.skipped == {FOLDER: 2}
    root = str(tmp_path / "ds")
    shutil.copytree(tokenized_root, root)
    tokenize(root, [mask_tokenizer], workers=1, force=True, show_progress=False)
    files = {i: r["files"] for i, r in DatasetStore(root).ledger(FOLDER).items()}
    assert files == {i: r["files"] for i, r in DatasetStore(tokenized_root).ledger(FOLDER).items()}


def test_invalid_and_malformed_labels_become_invalid_entries(tokenized_root, mask_tokenizer, tmp_path):
    root = str(tmp_path / "ds")
    shutil.copytree(tokenized_root, root)
    store = DatasetStore(root)
    data = {m.key: m.data for m in store.read_shard("sam_instance", 0)}
    empty_key, bad_key, none_key = list(data)[:3]
    data[empty_key] = b""  # the labeler failed on this sample
    sizes = rgb_sizes(store, 0)
    h, w = sizes[bad_key]
    data[bad_key] = json.dumps(label_record(h // 2, w // 2)).encode()  # masks not at the rgb size
    h, w = sizes[none_key]
    data[none_key] = json.dumps({"height": h, "width": w, "instances": []}).encode()
    commit_labels(store, 0, "sam_instance", data, [{"key": empty_key, "reason": "label_exception", "message": "test"}])

    summary = tokenize(root, [mask_tokenizer], workers=1, show_progress=False)
    assert summary.ok and summary.stale == {FOLDER: 1}  # relabeled shard only, no crash
    out = {m.key: m for m in store.read_shard(FOLDER, 0)}
    assert out[empty_key].data == b"" and out[bad_key].data == b""
    assert sorted(store.ledger(FOLDER)[0]["invalid"]) == sorted([empty_key, bad_key])
    lines = {x["key"]: x for x in map(json.loads, open(store.errors_path(FOLDER, 0)).read().splitlines())}
    assert lines[empty_key]["reason"] == "input_invalid"
    assert lines[bad_key]["reason"] == "decode_error" and "rgb is" in lines[bad_key]["message"]
    # a sample without instances is valid: every crop is there, with no instance
    assert [len(c["bbox"]) for c in read_member(out[none_key].data)] == [0, 0, 0]


def test_sequence_lists_the_instances_under_each_query_point(tokenized_root):
    store = DatasetStore(tokenized_root)
    member, rows = next(members_with_rows(store, 0))
    value = json.loads(member.data)
    rect = None
    for row in rows:
        crop = next(c for c in read_member(member.data) if c["crop"].tolist() == row.tolist())
        want = expected_rect_bbox(row, rgb_sizes(store, 0)[member.key])
        rect = crop["bbox"][np.abs(crop["bbox"] - np.asarray(want)).max(axis=1).argmin()]
        for seed in range(5):
            text = serialize_sam_instance(value, crop_row=row, rng=np.random.default_rng(seed))
            groups = re.findall(r"point v0=(\d+) v1=(\d+) ((?:none|polygon[^p]*)*)", text)
            assert len(groups) == 7 and text.count("point") == 7
            for y, x, rest in groups:
                boxes = re.findall(r"polygon v0=(\d+) v1=(\d+) v2=(\d+) v3=(\d+)((?: v[01]=\d+){16})", rest)
                assert rest.strip() == "none" or len(boxes) == rest.count("polygon") >= 1
                listed = [(int(b[1]), int(b[0]), int(b[3]), int(b[2])) for b in boxes]
                y, x = int(y), int(x)
                inside = rect[0] < y < rect[2] - 1 and rect[1] < x < rect[3] - 1
                outside = not (rect[0] - 1 <= y <= rect[2] and rect[1] - 1 <= x <= rect[3])
                if inside:
                    assert tuple(rect.tolist()) in listed
                if outside:
                    assert tuple(rect.tolist()) not in listed
    with pytest.raises(ValueError, match="not a token member"):
        serialize_sam_instance(json.loads(store.read_shard("sam_instance", 0)[0].data))


def test_text_training_sees_the_sequences_and_export_has_the_column(tokenized_root, tmp_path):
    texts = collect_texts(DatasetStore(tokenized_root))
    assert any(t.startswith("point v0=") and "polygon" in t for t in texts)
    export_parquet(tokenized_root, str(tmp_path / "export"))
    import pyarrow.parquet as pq

    table = pq.read_table(str(tmp_path / "export" / "part-000000.parquet"))
    assert FOLDER in table.column_names
    first = table.column(FOLDER)[0].as_py()
    assert json.loads(first)["crops"][0]["token_ids"]


def test_trainer_reads_the_instance_sequences(tokenized_root, tmp_path):
    """A 4M run can take sam_instance@224 as a sequence modality straight from the root."""
    from prism4m.trainer.train import train

    text_dir = str(tmp_path / "text")
    train_tokenizer(tokenized_root, "text", text_dir, {"vocab_size": 5000, "min_frequency": 1}, progress=False)
    summary = train({
        "data": {"root": tokenized_root, "modalities": [FOLDER], "text_tokenizer": text_dir, "eval_shards": [1],
                 "batch_size": 2, "num_workers": 0, "shuffle_buffer": 4},
        "masking": {"num_input_tokens": 32, "num_target_tokens": 32, "mixture": "all2all"},
        "model": {"size": "micro"}, "steps": 2, "out_dir": str(tmp_path / "run"), "print_table": False,
        "torch_threads": 1,
    })
    (row,) = summary["table"]
    assert row["modality"] == FOLDER and math.isfinite(row["val_loss"])
    # The text tokenizer knows the sequence's words, so they are not [UNK].
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{text_dir}/tokenizer.json")
    assert tok.token_to_id("polygon") is not None and tok.token_to_id("point") is not None


def test_report_draws_the_token_members_boxes(tokenized_root):
    """The report shows sam_instance@224 as instance tokens (not as an empty RLE label)."""
    from PIL import Image

    from prism4m.report.render import SampleContext, renderer_for
    from prism4m.report.stats import VALUES

    store = DatasetStore(tokenized_root)
    member = next(m for m in store.read_shard(FOLDER, 0) if m.data and json.loads(m.data)["crops"][0]["bbox"])
    rgb = next(m for m in store.read_shard("rgb", 0) if m.key == member.key)
    image = Image.open(io.BytesIO(rgb.data))
    n = len(json.loads(member.data)["crops"][0]["bbox"])
    panel = renderer_for(FOLDER, "json")(member.data, SampleContext(member.key, rgb=image))
    assert f"{n} instances in crop 0" in panel.html
    assert panel.image is not None and panel.image.size == image.size
    assert VALUES["sam_instance"](member.data)[1] == [n]
