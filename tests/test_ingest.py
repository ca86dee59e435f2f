"""Ingest: every input accounted for, images normalised, keys/crops/plan as users rely on."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from hostile import write_hostile_corpus
from prism4m.contract.crop_settings import crop_settings
from prism4m.pipeline.ingest import ingest, make_key
from prism4m.contract.store import KEY_PATTERN, DatasetStore
from prism4m.report.status import dataset_status


def _samples(root: str) -> dict[str, dict]:
    """key → {'rgb': PIL image, 'source': dict, 'crops': array}, over all committed shards."""
    store = DatasetStore(root)
    out: dict[str, dict] = {}
    for s in sorted(store.ledger("rgb")):
        for m in store.iter_shard("rgb", s):
            out.setdefault(m.key, {})["rgb"] = Image.open(io.BytesIO(m.data))
        for m in store.iter_shard("source", s):
            out[m.key]["source"] = json.loads(m.data)
        for m in store.iter_shard("crop_settings", s):
            out[m.key]["crops"] = np.load(io.BytesIO(m.data), allow_pickle=False)
    return out


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory, ray_session):
    src = tmp_path_factory.mktemp("hostile_src")
    expected = write_hostile_corpus(src)
    root = str(tmp_path_factory.mktemp("hostile_root") / "ds")
    summary = ingest(str(src), root, shard_size=4, short_side=64, n_crops=3, show_progress=False)
    return src, expected, root, summary


def test_every_hostile_file_is_accounted_for(hostile_root):
    src, expected, root, summary = hostile_root
    assert summary.ok, summary.failures
    store = DatasetStore(root)
    samples = _samples(root)
    ingested = {v["source"]["source_id"] for v in samples.values()}
    outcome = {name: "ok" for name in ingested}
    for e in store.read_errors("rgb"):
        outcome[e["source"]] = e["reason"]
    for line in store.read_bytes(store.p("_errors/ingest/scan.jsonl")).decode().splitlines():
        e = json.loads(line)
        outcome[e["source"].rsplit("/", 1)[-1]] = e["reason"]
    assert outcome == expected
    # status counts the same reasons a user would grep for
    st = dataset_status(root)
    rgb = next(f for f in st.folders if f.folder == "rgb")
    assert rgb.errors["truncated"] == 1 and rgb.errors["too_large"] == 1 and rgb.errors["empty"] == 1
    assert st.source_errors["duplicate"] == 1 and st.source_errors["unsupported"] == 1


def test_duplicate_records_point_at_the_kept_sample(hostile_root):
    _, _, root, _ = hostile_root
    samples = _samples(root)
    good = next(v for v in samples.values() if v["source"]["source_id"] == "good.jpg")
    assert good["source"]["duplicates"] == ["good_copy.jpg"]
    store = DatasetStore(root)
    dup = [json.loads(x) for x in store.read_bytes(store.p("_errors/ingest/scan.jsonl")).decode().splitlines()
           if json.loads(x)["reason"] == "duplicate"]
    assert dup[0]["duplicate_of"] == next(k for k, v in samples.items() if v["source"]["source_id"] == "good.jpg")


def test_images_are_normalised_to_rgb_with_short_side(hostile_root):
    _, _, root, _ = hostile_root
    for key, v in _samples(root).items():
        img = v["rgb"]
        assert img.format == "JPEG" and img.mode == "RGB"
        assert min(img.size) == 64, (v["source"]["source_id"], img.size)
        assert KEY_PATTERN.match(key) and "." not in key


def test_exif_orientation_is_applied(hostile_root):
    _, _, root, _ = hostile_root
    v = next(v for v in _samples(root).values() if v["source"]["source_id"] == "exif_rotated.jpg")
    # stored landscape 120×90 with orientation 6 → displayed portrait
    assert (v["source"]["original_width"], v["source"]["original_height"]) == (90, 120)
    w, h = v["rgb"].size
    assert h > w


def test_transparency_goes_over_white_and_16bit_keeps_its_range(hostile_root):
    _, _, root, _ = hostile_root
    samples = {v["source"]["source_id"]: v for v in _samples(root).values()}
    pal = np.asarray(samples["palette_transparent.png"]["rgb"]).reshape(-1, 3)
    src_pal = Image.open(hostile_root[0] / "palette_transparent.png")
    if (np.asarray(src_pal) == 0).any():  # index 0 is transparent → white pixels exist
        assert (pal.min(axis=1) > 240).any()
    g16 = np.asarray(samples["gray16.png"]["rgb"]).astype(int)
    assert g16.min() < 20 and g16.max() > 235  # the ramp spans the whole 8-bit range
    assert samples["gray16.png"]["source"]["original_mode"].startswith("I")
    assert samples["cmyk.jpg"]["source"]["original_mode"] == "CMYK"
    assert samples["animated.gif"]["source"]["format"] == "GIF"


def test_crop_settings_rows(hostile_root):
    _, _, root, _ = hostile_root
    for key, v in _samples(root).items():
        crops = v["crops"]
        w, h = v["rgb"].size
        assert crops.dtype == np.int64 and crops.shape == (3, 5)
        top, left, ch, cw, flip = crops[0]
        assert ch == cw == min(h, w) and flip == 0
        assert top == (h - ch) // 2 and left == (w - cw) // 2
        for t, l, hh, ww, f in crops:
            assert 0 <= t and t + hh <= h and 0 <= l and l + ww <= w and f in (0, 1)
        np.testing.assert_array_equal(crops, crop_settings(key, h, w, n_crops=3, seed=0))


def test_random_crops_follow_the_recipe():
    rows = np.concatenate([crop_settings(f"k{i}", 300, 400, n_crops=9, seed=0)[1:] for i in range(300)])
    area = rows[:, 2] * rows[:, 3] / (300 * 400)
    ratio = rows[:, 3] / rows[:, 2]
    assert area.min() >= 0.79 and area.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.34
    assert 0.4 < rows[:, 4].mean() < 0.6  # hflip p=0.5
    assert not np.array_equal(crop_settings("a", 300, 400, n_crops=5, seed=0),
                              crop_settings("a", 300, 400, n_crops=5, seed=1))


def test_rerun_does_no_work_and_new_files_append_shards(tmp_path, ray_session, photo_corpus):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(photo_corpus, src)
    root = str(tmp_path / "ds")
    first = ingest(str(src), root, shard_size=3, short_side=48, show_progress=False)
    store = DatasetStore(root)
    before = {s: r["files"] for s, r in store.ledger("rgb").items()}
    again = ingest(str(src), root, shard_size=3, short_side=48, show_progress=False)
    assert again.reports == [] and again.skipped_shards == len(before)
    Image.new("RGB", (80, 60), (10, 200, 30)).save(src / "aaa_new.png")  # sorts first
    grown = ingest(str(src), root, shard_size=3, short_side=48, show_progress=False)
    after = store.ledger("rgb")
    assert {s: after[s]["files"] for s in before} == before  # committed shards untouched
    assert len(after) == len(before) + 1
    assert grown.new_items == 1 and first.samples_planned + 1 == grown.samples_planned


def test_keys_are_stable_and_distinct():
    assert make_key("a/b c.d.jpg") == make_key("a/b c.d.jpg")
    assert make_key("a/x.jpg") != make_key("b/x.jpg")
    assert KEY_PATTERN.match(make_key("ünï cödé.jpg"))


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((50, 70, 3), seed * 20 % 255, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_webdataset_and_parquet_sources_keep_captions(tmp_path, ray_session):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "shard-0.tar", "w") as tar:
        for i in range(3):
            for ext, data in (("jpg", _jpeg(i)), ("txt", f"tar caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"image": [_jpeg(10 + i) for i in range(2)],
                             "caption": ["pq caption 0", "pq caption 1"]}), src / "part.parquet")
    root = str(tmp_path / "ds")
    summary = ingest(str(src), root, shard_size=10, short_side=32, show_progress=False)
    assert summary.ok and summary.samples_planned == 5
    store = DatasetStore(root)
    caps = sorted(m.data.decode() for s in store.ledger("caption") for m in store.iter_shard("caption", s))
    assert caps == ["pq caption 0", "pq caption 1", "tar caption 0", "tar caption 1", "tar caption 2"]


def test_img2dataset_folder_metadata_is_not_an_error(tmp_path, ray_session):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "i2d"
    (src / "00000").mkdir(parents=True)
    for i in range(2):
        (src / "00000" / f"00000000{i}.jpg").write_bytes(_jpeg(i))
        (src / "00000" / f"00000000{i}.txt").write_text(f"caption {i}")
        (src / "00000" / f"00000000{i}.json").write_text(json.dumps({"url": "x", "caption": f"caption {i}"}))
    pq.write_table(pa.table({"url": ["x", "y"], "caption": ["a", "b"]}), src / "00000.parquet")
    (src / "00000_stats.json").write_text("{}")
    root = str(tmp_path / "ds")
    summary = ingest(str(src), root, short_side=32, show_progress=False)
    # the metadata Parquet has no image column: reported, but the images and captions arrive
    assert summary.samples_planned == 2
    store = DatasetStore(root)
    assert sorted(m.data.decode() for m in store.iter_shard("caption", 0)) == ["caption 0", "caption 1"]


def _plan(root: str) -> list[dict]:
    import pyarrow.parquet as pq

    store = DatasetStore(root)
    return pq.read_table(store.p("_plan/ingest.parquet")).to_pylist()


def _scan_errors(root: str) -> dict[str, dict]:
    store = DatasetStore(root)
    lines = store.read_bytes(store.p("_errors/ingest/scan.jsonl")).decode().splitlines()
    return {e["source"]: e for e in map(json.loads, lines)}


def test_grown_corpus_appends_and_dedups_against_committed_samples(tmp_path, ray_session):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(5):
        (src / "a" / f"{i}.jpg").write_bytes(_jpeg(i))
    root = str(tmp_path / "ds")
    ingest(str(src), root, shard_size=2, short_side=32, show_progress=False)
    store = DatasetStore(root)
    committed = {s: r["files"] for s, r in store.ledger("rgb").items()}
    saved = _plan(root)
    (src / "0_copy.jpg").write_bytes(_jpeg(1))  # the bytes of a committed sample; sorts first
    (src / "b").mkdir()
    (src / "b" / "x.jpg").write_bytes(_jpeg(7))
    (src / "b" / "y.jpg").write_bytes(_jpeg(7))  # a duplicate among the new files
    (src / "b" / "z.jpg").write_bytes(_jpeg(8))
    grown = ingest(str(src), root, shard_size=2, short_side=32, show_progress=False)
    assert grown.ok and grown.new_items == 4 and grown.duplicates == 2 and grown.samples_planned == 7

    plan = _plan(root)
    by_id = {r["source_id"]: r for r in plan}
    # Saved rows stay first and as they were, except that an original lists its new duplicate.
    assert [dict(r, duplicates=[]) for r in plan[:len(saved)]] == [dict(r, duplicates=[]) for r in saved]
    assert by_id["a/1.jpg"]["duplicates"] == ["0_copy.jpg"]
    assert [r["source_id"] for r in plan[len(saved):]] == ["0_copy.jpg", "b/x.jpg", "b/y.jpg", "b/z.jpg"]
    assert by_id["0_copy.jpg"]["duplicate_of"] == by_id["a/1.jpg"]["key"] and by_id["0_copy.jpg"]["shard"] == -1
    assert by_id["b/y.jpg"]["duplicate_of"] == by_id["b/x.jpg"]["key"] and by_id["b/x.jpg"]["duplicates"] == ["b/y.jpg"]
    # New samples fill a new shard; committed shards are neither reopened nor rewritten.
    assert by_id["b/x.jpg"]["shard"] == by_id["b/z.jpg"]["shard"] == max(committed) + 1
    after = store.ledger("rgb")
    assert {s: after[s]["files"] for s in committed} == committed and len(after) == len(committed) + 1
    assert all(r["key"] == make_key(r["source_id"]) for r in plan)
    errors = _scan_errors(root)
    assert errors["0_copy.jpg"]["duplicate_of"] == by_id["a/1.jpg"]["key"]
    assert errors["b/y.jpg"]["duplicate_of"] == by_id["b/x.jpg"]["key"]


def test_plan_of_an_earlier_version_is_read_and_grown(tmp_path, ray_session):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prism4m.pipeline.ingest_plan import plan_schema

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(_jpeg(i))
    root = str(tmp_path / "ds")
    ingest(str(src), root, shard_size=2, short_side=32, show_progress=False)
    saved = _plan(root)
    # Earlier versions wrote the plan from Python rows: all-null columns were typed null.
    legacy = pa.Table.from_pylist(saved)
    assert legacy.schema.field("caption").type == pa.null()
    path = DatasetStore(root).p("_plan/ingest.parquet")
    pq.write_table(legacy, path)
    (src / "3.jpg").write_bytes(_jpeg(3))
    grown = ingest(str(src), root, shard_size=2, short_side=32, show_progress=False)
    assert grown.new_items == 1 and grown.samples_planned == 4 and grown.skipped_shards == 2
    plan = _plan(root)
    assert plan[:3] == saved and plan[3]["source_id"] == "3.jpg" and plan[3]["shard"] == 2
    assert pq.read_schema(path).remove_metadata() == plan_schema()


def test_items_are_planned_in_source_id_order_whatever_their_file_order(tmp_path, ray_session):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prism4m.pipeline.ingest_plan import load_plan_shard

    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "t.tar", "w") as tar:
        for i in reversed(range(4)):  # members in reverse name order
            data = _jpeg(i)
            info = tarfile.TarInfo(f"{i:05d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"image": [_jpeg(4 + i) for i in range(11)]}), src / "p.parquet")  # rows #10 < #2
    root = str(tmp_path / "ds")
    summary = ingest(str(src), root, shard_size=4, short_side=32, show_progress=False, scan_batch=1)
    assert summary.ok and summary.samples_planned == 15
    plan = _plan(root)
    ids = [r["source_id"] for r in plan]
    assert ids == sorted(ids) and ids[:3] == ["p.parquet#0", "p.parquet#1", "p.parquet#10"]
    assert [r["shard"] for r in plan] == [i // 4 for i in range(15)]
    store = DatasetStore(root)
    for s in range(4):  # a worker reads exactly its shard's rows, in plan order
        assert [r["source_id"] for r in load_plan_shard(store, s)] == ids[4 * s:4 * s + 4]


def test_listing_is_in_path_order_with_sidecars_and_refusals(tmp_path):
    from prism4m.pipeline.sources import list_source

    for name in ("a.jpg", "a/b.jpg", "a/b.txt", "a.b/c.png", "a0.jpg", "notes.md", "meta.json", ".DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    files, skipped = list_source(str(tmp_path))
    assert files["rel"].to_pylist() == ["a.b/c.png", "a.jpg", "a/b.jpg", "a0.jpg"]  # sorted(paths) order
    assert files["caption_uri"].to_pylist() == [None, None, str(tmp_path / "a" / "b.txt"), None]
    assert [(s.rel, s.reason) for s in skipped] == [("meta.json", "unsupported"), ("notes.md", "unsupported")]
