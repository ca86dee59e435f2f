"""Label stage: alignment, resume, staleness, failure isolation, registry extension."""

from __future__ import annotations

import io
import json
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from prism4m.labelers.base import LabelInput, Labeler
from prism4m.labelers.registry import available_labelers, get_labeler_class
from prism4m.pipeline.label import PlanError, label, run_labeler
from prism4m.contract.store import DatasetStore, producer_hash

CHEAP = ["canny_edge", "color_palette", "metadata"]


def assert_aligned(root: str) -> None:
    """Invariant 1: every committed folder holds exactly rgb's keys, in rgb's order, per shard."""
    store = DatasetStore(root)
    rgb = store.ledger("rgb")
    assert rgb
    for folder in store.ledger_folders():
        recs = store.ledger(folder)
        assert set(recs) <= set(rgb), folder
        for s in recs:
            keys = [m.key for m in store.iter_shard(folder, s)]
            assert keys == [m.key for m in store.iter_shard("rgb", s)], (folder, s)
            assert len(keys) == recs[s]["n_samples"] == len(set(keys))


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory, ray_session, photo_root):
    import shutil

    root = tmp_path_factory.mktemp("labelled") / "ds"
    shutil.copytree(photo_root, root)
    summary = label(str(root), CHEAP, workers=2, show_progress=False)
    assert summary.ok, summary.failures
    return str(root)


def test_all_folders_aligned_with_rgb(labelled_root):
    assert_aligned(labelled_root)
    assert {"canny_edge", "color_palette", "metadata", "source", "crop_settings"} <= set(
        DatasetStore(labelled_root).ledger_folders())


def test_outputs_have_the_4m_formats(labelled_root):
    store = DatasetStore(labelled_root)
    rgb = {m.key: Image.open(io.BytesIO(m.data)) for m in store.iter_shard("rgb", 0)}
    for m in store.iter_shard("canny_edge", 0):
        edge = Image.open(io.BytesIO(m.data))
        assert edge.format == "PNG" and edge.mode == "L" and edge.size == rgb[m.key].size
        assert set(np.unique(np.asarray(edge))) <= {0, 255}
    for m in store.iter_shard("color_palette", 0):
        pal = json.loads(m.data)
        assert isinstance(pal, list) and len(pal) == 1  # ml-4m reads sample[0][str(k)]
        for k in range(1, 8):
            colours = pal[0][str(k)]
            assert len(colours) == k and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    for m in store.iter_shard("metadata", 0):
        meta = json.loads(m.data)
        src = json.loads(next(x.data for x in store.iter_shard("source", 0) if x.key == m.key))
        assert meta["original_width"] == src["original_width"]
        assert {"colorfulness", "brightness", "contrast", "saturation", "entropy"} <= set(meta)
        assert 0 <= meta["brightness"] <= 255 and 0 <= meta["entropy"] <= 8
        assert "n_sam_instances" not in meta  # needs sam_instance, which is absent


def test_metadata_statistics_follow_their_definitions():
    from prism4m.labelers.metadata import MetadataLabeler

    gray = np.full((40, 60, 3), 100, np.uint8)
    half = gray.copy()
    half[:, :30] = (255, 0, 0)
    lab = MetadataLabeler()
    out = [json.loads(b) for b in lab.label_batch([LabelInput("a", gray), LabelInput("b", half)])]
    assert out[0]["colorfulness"] == pytest.approx(0.0) and out[0]["entropy"] == pytest.approx(0.0)
    assert out[0]["brightness"] == pytest.approx(100, abs=1) and out[0]["contrast"] == pytest.approx(0)
    assert out[1]["colorfulness"] > 50 and out[1]["entropy"] == pytest.approx(1.0)


def test_rerun_is_a_noop_and_a_changed_config_is_stale(labelled_root, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(labelled_root, root)
    store = DatasetStore(str(root))
    before = {f: store.ledger(f) for f in CHEAP}
    again = label(str(root), CHEAP, workers=1, show_progress=False)
    assert again.planned == {} and again.reports == []
    assert {f: store.ledger(f) for f in CHEAP} == before

    changed = label(str(root), ["canny_edge"], {"canny_edge": {"low": 10, "high": 20}}, show_progress=False)
    assert changed.planned == {} and changed.stale_skipped == {"canny_edge": len(before["canny_edge"])}
    assert store.ledger("canny_edge") == before["canny_edge"]  # reported, not recomputed

    updated = label(str(root), ["canny_edge"], {"canny_edge": {"low": 10, "high": 20}}, update_stale=True,
                    show_progress=False)
    assert updated.planned == {"canny_edge": len(before["canny_edge"])}
    new = store.ledger("canny_edge")
    assert all(r["producer"]["config"]["low"] == 10 for r in new.values())
    assert all(new[s]["files"] != before["canny_edge"][s]["files"] for s in new)
    forced = label(str(root), ["color_palette"], force=True, show_progress=False)
    assert forced.planned == {"color_palette": len(before["color_palette"])}
    # deterministic labelers give the same bytes when forced
    assert {s: r["files"] for s, r in store.ledger("color_palette").items()} == \
        {s: r["files"] for s, r in before["color_palette"].items()}
    assert_aligned(str(root))


class _FlakyLabeler(Labeler):
    name = "flaky"
    extension = "json"

    def label_batch(self, batch):
        if any(s.key == "bad" for s in batch):
            raise RuntimeError("cannot label this one")
        return [json.dumps({"ok": s.key}).encode() for s in batch]


def test_a_failing_sample_becomes_an_invalid_record_and_keeps_its_place():
    img = np.zeros((8, 8, 3), np.uint8)
    samples = [LabelInput(k, img) for k in ("a", "bad", "c")]
    payloads, errors = run_labeler(_FlakyLabeler(), samples)
    assert payloads[0] and payloads[2] and payloads[1] == b""
    assert errors == [{"key": "bad", "reason": "label_exception",
                       "message": "flaky: RuntimeError: cannot label this one"}]


def test_missing_required_input_is_reported_before_running(photo_root):
    from prism4m.labelers.registry import make_labeler
    from prism4m.pipeline.label import plan

    store = DatasetStore(photo_root)

    class NeedsDepth(_FlakyLabeler):
        name = "needs_depth"
        requires = ("depth",)

    with pytest.raises(PlanError, match="needs 'depth'"):
        plan(store, {"needs_depth": NeedsDepth()})
    levels, _ = plan(store, {"metadata": make_labeler("metadata"), "canny_edge": make_labeler("canny_edge")},
                     force=True)
    assert [sorted({n for u in lvl for n in u.labelers}) for lvl in levels] == [["canny_edge", "metadata"]]


def test_a_damaged_shard_fails_its_unit_naming_the_file_and_the_others_commit(fresh_photo_root):
    from cli_run import cli

    store = DatasetStore(fresh_photo_root)
    before = store.read_bytes(store.shard_path("canny_edge", 1))
    path = store.shard_path("rgb", 1)
    data = store.read_bytes(path)
    store.fs.pipe_file(path, data[: len(data) // 2])  # damaged since it was committed
    code, out = cli("label", fresh_photo_root, "-m", "canny_edge,color_palette", "--force", "-q")
    assert code == 1
    failed = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "rgb/shard-000001.tar: not a readable tar" in failed[0], out
    assert sorted(store.ledger("color_palette")) == [0]  # shard 0 labelled all the same
    assert store.read_bytes(store.shard_path("canny_edge", 1)) == before  # the earlier label stays


def test_label_refuses_a_root_without_rgb(tmp_path):
    with pytest.raises(PlanError, match="no committed rgb shards"):
        label(str(tmp_path / "empty"), ["canny_edge"], show_progress=False)


def test_third_party_labelers_register_through_entry_points(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "acme_labels").mkdir(parents=True)
    (pkg / "acme_labels" / "__init__.py").write_text(textwrap.dedent("""
        from prism4m.labelers.base import Labeler

        class Blur(Labeler):
            name = "acme_blur"
            extension = "png"

            def label_batch(self, batch):
                return [b"x" for _ in batch]
    """))
    dist = pkg / "acme_labels-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-labels\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[prism4m.labelers]\nacme_blur = acme_labels:Blur\n")
    monkeypatch.syspath_prepend(str(pkg))
    assert available_labelers()["acme_blur"] == "acme_labels:Blur"
    assert get_labeler_class("acme_blur").name == "acme_blur"
    with pytest.raises(KeyError, match="unknown labeler 'nope'"):
        get_labeler_class("nope")


def test_producer_hash_tracks_output_config_only():
    cls = get_labeler_class("canny_edge")
    base = producer_hash(cls().producer())
    assert producer_hash(cls({"batch_size": 3, "num_cpus": 0.5}).producer()) == base
    assert producer_hash(cls({"blur_sigma": 2.0}).producer()) != base
