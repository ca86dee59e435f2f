"""Ingest at decoder speed, without changing what it writes: the driver's scan equals Ray's,
both workers get a shard, and DCT-domain downscaling reaches rotated (phone) JPEGs too."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from prism4m.contract.store import DatasetStore
from prism4m.pipeline import ingest as ingest_mod
from prism4m.pipeline.images import normalize_image
from prism4m.pipeline.ingest import ingest


def _jpeg(i: int, size=(96, 72), exif: Image.Exif | None = None) -> bytes:
    rng = np.random.default_rng(i)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def _corpus(d, n: int = 8):
    d.mkdir()
    for i in range(n):
        (d / f"im{i:02d}.jpg").write_bytes(_jpeg(i))
    (d / "dup.jpg").write_bytes(_jpeg(0))                 # a content duplicate
    (d / "empty.jpg").write_bytes(b"")                    # an empty file
    (d / "im01.txt").write_text("a caption")              # a caption sidecar
    return d


def _root_bytes(root: str) -> dict[str, bytes]:
    store = DatasetStore(root)
    out = {}
    for rel in ("_plan/ingest.parquet", "_errors/ingest/scan.jsonl"):
        out[rel] = store.read_bytes(store.p(rel))
    for folder in ("rgb", "source", "crop_settings", "caption"):
        for s in sorted(store.ledger(folder)):
            out[f"{folder}/{s}"] = b"".join(m.key.encode() + m.data for m in store.iter_shard(folder, s))
    return out


def test_driver_scan_writes_what_the_ray_scan_writes(tmp_path, ray_session, monkeypatch):
    src = _corpus(tmp_path / "src")
    here = ingest(str(src), str(tmp_path / "here"), shard_size=4, short_side=32, show_progress=False)
    assert ingest_mod._scan_here(str(src), ingest_mod.list_source(str(src))[0])
    monkeypatch.setattr(ingest_mod, "DRIVER_SCAN_MAX_FILES", 0)  # every scan on Ray actors
    on_ray = ingest(str(src), str(tmp_path / "ray"), shard_size=4, short_side=32, show_progress=False)
    assert here.ok and on_ray.ok
    assert (here.new_items, here.duplicates, here.scan_errors) == (on_ray.new_items, on_ray.duplicates,
                                                                   on_ray.scan_errors)
    assert here.duplicates == 1 and here.scan_errors == {"duplicate": 1}
    assert _root_bytes(str(tmp_path / "here")) == _root_bytes(str(tmp_path / "ray"))


def test_driver_scan_only_for_a_few_local_loose_images(tmp_path):
    import pyarrow as pa

    def listing(kinds):
        return pa.table({"uri": [f"/x/{i}" for i in range(len(kinds))], "rel": [str(i) for i in range(len(kinds))],
                         "kind": kinds, "caption_uri": [None] * len(kinds)})

    assert ingest_mod._scan_here(str(tmp_path), listing(["image"] * 3))
    assert not ingest_mod._scan_here(str(tmp_path), listing(["image", "tar"]))     # containers: on Ray
    assert not ingest_mod._scan_here("s3://bucket/raw", listing(["image"] * 3))   # remote: on Ray
    assert not ingest_mod._scan_here(str(tmp_path), listing(["image"] * (ingest_mod.DRIVER_SCAN_MAX_FILES + 1)))


def test_two_units_run_on_two_workers_at_once(tmp_path, ray_session):
    """The first actor ready used to queue both units (two ingest shards) and run them one after
    the other while the second actor idled. Here each unit waits until the other has started:
    queued behind one another they would time out."""
    from prism4m.pipeline.execute import run_units

    class Rendezvous:
        def __init__(self, folder: str):
            self.folder = folder

        def ready(self) -> bool:
            return True

        def process(self, unit: int) -> dict:
            import os
            import time
            from pathlib import Path

            Path(self.folder, f"started-{unit}").touch()
            deadline = time.monotonic() + 30
            while len(list(Path(self.folder).glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            return {"samples": 1, "met": len(list(Path(self.folder).glob("started-*"))) == 2, "worker": os.getpid()}

    report = run_units([0, 1], Rendezvous, (str(tmp_path),), workers=2, max_retries=0)
    assert report.ok and len(report.results) == 2
    assert all(r["met"] for r in report.results)
    assert len({r["worker"] for r in report.results}) == 2


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_dct_downscaling_for_every_orientation(orientation, monkeypatch):
    from PIL import JpegImagePlugin

    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: calls.append(size) or draft(self, mode, size))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = normalize_image(_jpeg(0, size=(400, 300), exif=exif), short_side=64, jpeg_quality=90, min_side=1,
                          max_pixels=10**8)
    assert calls, "draft was not used"
    assert (img.original_width, img.original_height) == ((300, 400) if orientation in (6, 8) else (400, 300))
    assert min(img.width, img.height) == 64
    assert (img.width > img.height) == (orientation == 1)


def test_resize_filter_is_a_setting_and_bicubic_keeps_earlier_roots_current(tmp_path, ray_session):
    from prism4m.errors import UserError

    src = _corpus(tmp_path / "src", n=3)
    rgb, producers = {}, {}
    for flt in ("bicubic", "hamming"):
        root = str(tmp_path / flt)
        assert ingest(str(src), root, short_side=32, show_progress=False, resize_filter=flt).ok
        store = DatasetStore(root)
        rgb[flt] = [m.data for m in store.read_shard("rgb", 0)]
        producers[flt] = store.ledger("rgb")[0]["producer"]["config"]
    assert "resize_filter" not in producers["bicubic"]  # the producer roots made before the setting had
    assert producers["hamming"]["resize_filter"] == "hamming"
    assert len(rgb["bicubic"]) == len(rgb["hamming"]) == 3 and rgb["bicubic"] != rgb["hamming"]
    with pytest.raises(UserError, match="resize_filter"):  # a root keeps its filter
        ingest(str(src), str(tmp_path / "bicubic"), show_progress=False, resize_filter="hamming")
    again = ingest(str(src), str(tmp_path / "hamming"), show_progress=False)  # remembered: nothing to redo
    assert again.ok and again.skipped_shards == 1 and not again.planned.get("rgb")


def test_private_local_ray_starts_without_monitors(ray_session):
    """No autoscaler monitor or log monitor on a private local node (each a Python process
    importing Ray at every command's start); the dashboard's API server stays (Ray Train uses it)."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    if node is None or not node.head:
        pytest.skip("the session joined a Ray it did not start")
    started = set(node.all_processes)
    assert ray_constants.PROCESS_TYPE_MONITOR not in started
    assert ray_constants.PROCESS_TYPE_LOG_MONITOR not in started
    assert {ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET,
            ray_constants.PROCESS_TYPE_DASHBOARD} <= started


@pytest.mark.parametrize("photo,short_side", [("astronaut", 300), ("coffee", 224), ("chelsea", 512),
                                              ("rocket", 200), ("coffee", 640)])
def test_bicubic_resize_is_pillows_bicubic(photo, short_side):
    """The vectorised resize (large ingest units) agrees with Pillow's own bicubic (small
    units, and roots made before it) to 2 grey levels on at most 1% of values, down- and
    upscaling real photos; resizes Pillow does with a box reduction first (≥ 6×) and the other
    filters are Pillow's own, exactly."""
    from skimage import data

    from prism4m.pipeline.images import resize

    img = Image.fromarray(getattr(data, photo)())
    w, h = img.size
    s = short_side / min(w, h)
    size = (round(w * s), round(h * s))
    ours = np.asarray(resize(img, size, Image.Resampling.BICUBIC, vectorised=True)).astype(int)
    pillows = np.asarray(img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)).astype(int)
    assert np.array_equal(np.asarray(resize(img, size, Image.Resampling.BICUBIC)), pillows)
    assert ours.shape == pillows.shape == (size[1], size[0], 3)
    assert np.abs(ours - pillows).max() <= 2 and (ours != pillows).mean() <= 0.01
    tiny = (max(1, w // 8), max(1, h // 8))
    assert np.array_equal(np.asarray(resize(img, tiny, Image.Resampling.BICUBIC, vectorised=True)),
                          np.asarray(img.resize(tiny, Image.Resampling.BICUBIC, reducing_gap=3.0)))
    assert np.array_equal(np.asarray(resize(img, size, Image.Resampling.HAMMING, vectorised=True)),
                          np.asarray(img.resize(size, Image.Resampling.HAMMING, reducing_gap=3.0)))


def test_vectorised_resize_is_decided_by_the_planned_shard_size(tmp_path):
    """Large units (the default shard size) get the fast kernel; small ones, and other filters,
    keep Pillow's resize: by the plan's size, so a unit's bytes never depend on its worker."""
    from prism4m.pipeline.images import VECTORISED_RESIZE_MIN_IMAGES
    from prism4m.pipeline.ingest import IngestWorker

    store = DatasetStore(str(tmp_path / "root"))
    bicubic = IngestWorker(store, {}, None, False)
    assert bicubic._vectorised_resize(1000) and bicubic._vectorised_resize(VECTORISED_RESIZE_MIN_IMAGES)
    assert not bicubic._vectorised_resize(VECTORISED_RESIZE_MIN_IMAGES - 1)
    assert not IngestWorker(store, {"resize_filter": "lanczos"}, None, False)._vectorised_resize(1000)
