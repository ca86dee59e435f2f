"""The HTML report of a real ingested root: panels, invalid members, errors, provenance, throughput.

The root is the shared photo root (rgb, crop_settings, canny_edge) plus color_palette and
metadata from the real labelers, plus members in the deep labelers' documented formats
committed through DatasetStore (no models needed to check that each renders), one invalid
member with its error line, a random-weights folder, an unknown folder and a refused input.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prism4m.contract.store import DatasetStore, Member

INVALID_FOLDER = "det"
SCAN_LINE = {"source": "corpus/broken.jpg", "reason": "decode_error", "message": "cannot identify image file"}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _sam(h: int, w: int) -> bytes:
    from pycocotools import mask as mask_util

    inst = []
    for (y0, x0, y1, x1) in ((10, 10, h // 2, w // 2), (h // 3, w // 3, h - 5, w - 5)):
        m = np.zeros((h, w), np.uint8, order="F")
        m[y0:y1, x0:x1] = 1
        rle = mask_util.encode(m)
        inst.append({"segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(m.sum()), "score": 0.9,
                     "stability_score": 0.95})
    return json.dumps({"height": h, "width": w, "instances": inst}).encode()


def _synthetic(folder: str, key: str, img: np.ndarray, rng: np.random.Generator) -> bytes:
    h, w = img.shape[:2]
    lum = img.mean(axis=2)
    if folder == "depth":
        return _png((lum * 257).astype(np.uint16))
    if folder == "normal":
        n = np.zeros((h, w, 3), np.uint8)
        n[..., 0] = np.linspace(0, 255, w)[None, :]
        n[..., 1] = np.linspace(0, 255, h)[:, None]
        n[..., 2] = 255
        return _png(n)
    if folder == "semseg_coco":
        ids = np.full((h, w), 255, np.uint8)
        ids[: h // 2] = 0          # person
        ids[h // 2:, : w // 2] = 119  # a stuff class
        return _png(ids)
    if folder == "det":
        return json.dumps({"instances": [{"boxes": [0.1, 0.1, 0.6, 0.7], "class_name": "dog", "score": 0.91}]}).encode()
    if folder == "sam_instance":
        return _sam(h, w)
    if folder == "human_poses":
        kp = [[w * (0.3 + 0.4 * (i % 2)), h * (0.1 + 0.05 * i), 0.9] for i in range(17)]
        return json.dumps({"persons": [{"bbox_xyxy": [5, 5, w - 5, h - 5], "score": 0.8, "keypoints": kp}]}).encode()
    if folder == "caption":
        return f"a photograph of {key.split('-')[0]}".encode()
    if folder == "clip":
        return _npy(rng.standard_normal((1 + 16, 8)).astype(np.float16))
    if folder == "tok_rgb@224":
        return _npy(rng.integers(0, 64, size=(3, 16)).astype(np.int16))
    if folder == "mystery":
        return b"\x00\x01opaque bytes"
    raise AssertionError(folder)


SYNTHETIC = {"depth": "png", "normal": "png", "semseg_coco": "png", "det": "json", "sam_instance": "json",
             "human_poses": "json", "caption": "txt", "clip": "npy", "tok_rgb@224": "npy", "mystery": "bin"}
RANDOM_FOLDER = "depth"


def _commit_synthetic(root: str) -> dict:
    """Commit SYNTHETIC folders for every rgb shard; returns {invalid_key, wall_s per (folder, shard)}."""
    store = DatasetStore(root)
    rng = np.random.default_rng(0)
    invalid_key = None
    walls = {}
    for shard in sorted(store.ledger("rgb")):
        rgb = store.read_shard("rgb", shard)
        imgs = [np.asarray(Image.open(io.BytesIO(m.data)).convert("RGB")) for m in rgb]
        outputs, records, errors = {}, {}, {}
        for folder, ext in SYNTHETIC.items():
            members = [Member(m.key, ext, _synthetic(folder, m.key, im, rng)) for m, im in zip(rgb, imgs)]
            errors[folder] = []
            if folder == INVALID_FOLDER and shard == 0:
                invalid_key = members[1].key
                members[1] = Member(invalid_key, ext, b"")
                errors[folder] = [{"key": invalid_key, "reason": "label_exception", "message": "boom: synthetic"}]
            kind = "tokenizer" if folder.startswith("tok_") else "labeler"
            producer = {"kind": kind, "name": folder, "config": {"synthetic": True}, "code_version": "test"}
            if kind == "tokenizer":
                producer["vocab_size"] = 64
            walls[(folder, shard)] = 0.5 + shard
            records[folder] = {"producer": producer, "inputs": {}, "random_weights": folder == RANDOM_FOLDER,
                               "wall_s": walls[(folder, shard)]}
            outputs[folder] = members
        store.commit_unit(shard, outputs, records, errors)
    scan = Path(root) / "_errors" / "ingest" / "scan.jsonl"
    scan.parent.mkdir(parents=True, exist_ok=True)
    with open(scan, "a") as f:
        f.write(json.dumps(SCAN_LINE) + "\n")
    return {"invalid_key": invalid_key, "walls": walls}


def _label_in_process(root: str, names: list[str]) -> None:
    """The real labelers' outputs, committed like the label stage does, without Ray actors (fast)."""
    import time

    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler

    store = DatasetStore(root)
    for name in names:
        lab = make_labeler(name)
        lab.ensure_setup()
        for shard in sorted(store.ledger("rgb")):
            t0 = time.perf_counter()
            rgb = store.read_shard("rgb", shard)
            wanted = [f for f in (*lab.requires, *lab.optional_inputs) if shard in store.ledger(f)]
            extra = {f: {m.key: m.data for m in store.read_shard(f, shard)} for f in wanted}
            batch = [LabelInput(m.key, np.asarray(Image.open(io.BytesIO(m.data)).convert("RGB")),
                                {f: extra[f][m.key] for f in wanted}) for m in rgb]
            out = lab.label_batch(batch)
            rec = {"producer": lab.producer(), "inputs": {}, "random_weights": False,
                   "wall_s": round(time.perf_counter() - t0, 4)}
            store.commit_unit(shard, {name: [Member(m.key, lab.extension, d) for m, d in zip(rgb, out)]},
                              {name: rec})


def build_labelled_root(photo_root: str, base: Path) -> tuple[str, dict]:
    """A private labelled copy of photo_root, built once per test session (shared with the browser test)."""
    root = base / "report_root"
    info_file = base / "report_root.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        return str(root), info
    shutil.copytree(photo_root, root)
    _label_in_process(str(root), ["color_palette", "metadata"])
    info = _commit_synthetic(str(root))
    info = {"invalid_key": info["invalid_key"]}
    info_file.write_text(json.dumps(info))
    return str(root), info


@pytest.fixture(scope="module")
def labelled_root(photo_root, tmp_path_factory):
    return build_labelled_root(photo_root, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def report(labelled_root, tmp_path_factory):
    from prism4m.report.html import build_report

    root, info = labelled_root
    out = tmp_path_factory.mktemp("report")
    index = build_report(root, out, n_samples=8, seed=1)  # 8 = every sample of the root
    return index, index.read_text(), root, info


def _section(page: str, sid: str) -> str:
    m = re.search(rf"<section id='{sid}'>(.*?)</section>", page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_report_has_every_panel_and_folder(report):
    index, page, root, _ = report
    for sid in ("overview", "gallery", "statistics", "throughput", "provenance", "errors"):
        _section(page, sid)
    folders = DatasetStore(root).ledger_folders()
    assert {"canny_edge", "color_palette", "metadata", *SYNTHETIC} <= set(folders)
    gallery = _section(page, "gallery")
    cards = [c.strip() for c in re.findall(r"<div class='mod'>([^<]+)", gallery)]
    for f in folders:
        assert cards.count(f) == 8, f"{f}: {cards.count(f)} gallery cards, want one per sample"
    assert "“a photograph of" in gallery                    # caption text
    assert "person" in gallery and "no class" in gallery     # semseg legend with class names
    assert "1 boxes: dog" in gallery                         # det class names
    assert "2 instances" in gallery and "1 person(s)" in gallery
    assert "class='pal'" in gallery and "brightness" in gallery  # palette swatches, metadata table
    assert "4×4 patches" in gallery  # clip (1+16, C) → 4×4 map
    assert "int16 3×16" in gallery                           # token members
    assert "bytes" in gallery                                # unknown folder: generic by file type


def test_gallery_images_exist_and_show_something(report):
    index, page, _, _ = report
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) >= 8 * 10
    for src in srcs:
        path = index.parent / src
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        assert arr.size and arr.std() > 1.0, f"{src} is blank"
    depth = next(s for s in srcs if "_depth." in s)
    rgbish = np.asarray(Image.open(index.parent / depth).convert("RGB"))
    assert len(np.unique(rgbish.reshape(-1, 3), axis=0)) > 20  # colormapped, not grey


def test_invalid_member_and_errors_are_shown(report):
    _, page, _, info = report
    key = info["invalid_key"]
    gallery = _section(page, "gallery")
    invalid_cards = re.findall(r"<div class='card invalid'><div class='mod'>([^<]+)</div>(.*?)</div></div>", gallery)
    assert [f for f, _ in invalid_cards] == [INVALID_FOLDER]
    assert "0 bytes" in invalid_cards[0][1] and "label_exception" in invalid_cards[0][1]
    errors = _section(page, "errors")
    assert key in errors and "label_exception" in errors and "boom: synthetic" in errors
    assert SCAN_LINE["source"] in errors and SCAN_LINE["reason"] in errors
    stats = _section(page, "statistics")
    det = re.search(r"<h3>det</h3>.*?coverage <b>([\d.]+)%</b> \((\d+) valid / (\d+)", stats, re.S)
    assert det.groups() == ("87.5", "7", "8")


def test_random_weights_banner_and_provenance(report, photo_root, tmp_path):
    from prism4m.report.html import build_report

    _, page, _, _ = report
    banner = re.search(r"<div id='random-weights' class='banner'>(.*?)</div>", page, re.S)
    assert banner and "RANDOM WEIGHTS" in banner.group(1) and RANDOM_FOLDER in banner.group(1)
    assert "canny_edge" not in banner.group(1)
    prov = _section(page, "provenance")
    assert "prism4m.labelers.canny_edge.CannyEdgeLabeler" in prov
    clean = build_report(photo_root, tmp_path / "clean", n_samples=2).read_text()
    assert "random-weights" not in clean and "RANDOM WEIGHTS" not in clean


def test_throughput_matches_ledger(report):
    _, page, root, _ = report
    store = DatasetStore(root)
    thr = _section(page, "throughput")
    for folder in ("canny_edge", "depth", "color_palette"):
        recs = store.ledger(folder).values()
        rate = sum(r["n_samples"] for r in recs) / sum(r["wall_s"] for r in recs)
        row = re.search(rf"<tr><td>{re.escape(folder)}</td>.*?<b>([\d,.]+)</b>", thr)
        assert row and float(row.group(1).replace(",", "")) == pytest.approx(rate, rel=0.01)
    # synthetic depth: 4 samples in 0.5 s and 4 in 1.5 s → 8 / 2.0
    assert re.search(r"<tr><td>depth</td>.*?<b>4\.00</b>", thr)


def test_codebook_usage_of_token_folder(labelled_root):
    from prism4m.report.stats import folder_stats

    root, _ = labelled_root
    store = DatasetStore(root)
    recs = store.ledger("tok_rgb@224")
    st = folder_stats(store, "tok_rgb@224", recs, 8)
    ids = np.concatenate([np.load(io.BytesIO(m.data)).ravel() for s in recs for m in store.iter_shard("tok_rgb@224", s)])
    assert st.codebook["vocab_size"] == 64
    assert st.codebook["codes_used"] == len(np.unique(ids))
    assert st.codebook["tokens_seen"] == ids.size == 8 * 3 * 16
    assert st.codebook["usage"] == pytest.approx(len(np.unique(ids)) / 64)


def test_pick_samples_is_seeded_uniform_and_in_range():
    from prism4m.report.html import pick_samples

    ledger = {0: {"n_samples": 5}, 1: {"n_samples": 1}, 2: {"n_samples": 4}}
    a = pick_samples(ledger, 6, seed=3)
    assert a == pick_samples(ledger, 6, seed=3) and a != pick_samples(ledger, 6, seed=4)
    assert len(set(a)) == 6 and all(0 <= p < ledger[s]["n_samples"] for s, p in a)
    assert sorted(pick_samples(ledger, 50, seed=0)) == [(s, p) for s in ledger for p in range(ledger[s]["n_samples"])]


def test_renderers_table_and_fallbacks():
    from prism4m.report.render import RENDERERS, SampleContext, render_member, renderer_for, render_tokens

    ctx = SampleContext("k")
    assert renderer_for("tok_depth@224~abcd1234", "npy") is render_tokens
    assert renderer_for("depth", "png") is RENDERERS["depth"]
    inv = render_member("depth", "png", b"", ctx)
    assert inv.invalid and "0 bytes" in inv.html
    broken = render_member("depth", "png", b"not a png", ctx)
    assert not broken.invalid and "could not render" in broken.html
    generic = render_member("brand_new", "png", _png(np.arange(64, dtype=np.uint8).reshape(8, 8)), ctx)
    assert generic.image is not None and generic.image.size == (8, 8)


def test_every_modality_of_the_table_has_a_renderer_statistics_and_a_place():
    """The report's tables are keyed by the folders of prism4m.contract.modalities: every label
    folder has a renderer and a statistics function (or is listed as shown generically), the
    gallery order is the table's, and no entry names a folder the table does not know."""
    from prism4m.contract.modalities import MODALITIES
    from prism4m.report import render, stats
    from prism4m.report.html import FOLDER_ORDER, folder_sort_key

    folders = {m.label_folder for m in MODALITIES.values()}
    assert not folders - set(render.RENDERERS) - set(render.GENERIC_FOLDERS)
    assert not folders - set(stats.VALUES) - set(stats.GENERIC_FOLDERS)
    assert not set(render.RENDERERS) - folders and not set(render.GENERIC_FOLDERS) - folders
    assert not set(stats.VALUES) - folders and not set(stats.GENERIC_FOLDERS) - folders
    assert not set(render.RENDERERS) & set(render.GENERIC_FOLDERS)
    assert not set(stats.VALUES) & set(stats.GENERIC_FOLDERS)
    table_order = list(dict.fromkeys(m.label_folder for m in MODALITIES.values()))
    assert list(FOLDER_ORDER) == table_order
    assert sorted(["tok_rgb@224", "brand_new", *reversed(table_order)], key=folder_sort_key) == \
        [*table_order, "brand_new", "tok_rgb@224"]


def test_feature_maps_are_factorised_as_the_tokenizers_do():
    """A (1 + h·w, C) map whose grid is not square is drawn h×w as modality.specs.feature_grid
    reads it (the tokenizers' factorisation), not as one row."""
    from prism4m.modality.specs import feature_grid
    from prism4m.report.render import SampleContext, render_features

    arr = np.random.default_rng(0).normal(size=(1 + 12, 8)).astype(np.float16)
    panel = render_features(_npy(arr), SampleContext("k"))
    h, w = feature_grid(12, (1, 1))
    assert h * w == 12 and {h, w} == {3, 4} and f"{h}×{w} patches" in panel.html
    assert panel.image.size == (max(w * 12, 96), max(h * 12, 96))


def test_tokenizer_reconstructions(report, tmp_path, capsys):
    """A tiny (untrained) VQ tokenizer of canny_edge: reconstructions appear beside the labels."""
    pytest.importorskip("torch")
    try:
        from prism4m.tokenizers.card import TokenizerCard
        from prism4m.modality.specs import get_spec
        from prism4m.tokenizers.vq import VQTokenizer, vq_architecture
        from prism4m.tokenizers.base import SIZES
    except ImportError as exc:
        pytest.skip(f"prism4m.tokenizers not available yet: {exc}")
    from prism4m.report.html import build_report

    _, _, root, _ = report
    spec = get_spec("canny_edge")
    arch = vq_architecture(spec, 64, SIZES["tiny"], 32, 1)
    card = TokenizerCard(type="vq", modality="canny_edge", token_folder="tok_canny_edge@64", vocab_size=32,
                         n_tokens=arch["grid"] ** 2, token_grid=[arch["grid"]] * 2, input_size=64,
                         patch_size=spec.patch_size, architecture=arch, random_weights=True)
    VQTokenizer.create(card).save(str(tmp_path / "tok"))
    from prism4m.tokenizers.text import WordPieceTokenizer, fixed_tokens, train_wordpiece

    text = WordPieceTokenizer(train_wordpiece(["a photograph of a dog", "a photograph of the sky"] * 5,
                                              vocab_size=len(fixed_tokens()) + 60, min_frequency=1))
    text.save(str(tmp_path / "text"), TokenizerCard(type="wordpiece", modality="text", vocab_size=1))
    page = build_report(root, tmp_path / "rep", n_samples=2,
                        tokenizers=[str(tmp_path / "tok"), str(tmp_path / "text"), str(tmp_path / "nowhere")]).read_text()
    recon = re.findall(r"<div class='card recon'><div class='mod'>([^<]+)</div><a href='([^']+)'", page)
    assert len(recon) == 2 and "canny_edge" in recon[0][0] and "RANDOM WEIGHTS" in recon[0][0]
    # the text tokenizer reads every sequence folder of the root: caption, det, palette, metadata, poses
    texts = re.findall(r"<div class='card recon'><div class='mod'>⟲ wordpiece:text[^<]*← (\w+)</div>"
                       r"<div class='cap'>(.*?)</div>", page)
    assert sorted({f for f, _ in texts}) == ["caption", "color_palette", "det", "human_poses", "metadata"]
    caption = next(c for f, c in texts if f == "caption")
    assert re.search(r"\d+ tokens → <code>a photograph of", caption), caption
    img = np.asarray(Image.open(tmp_path / "rep" / recon[0][1]))
    assert img.shape[0] == 64 and img.shape[1] == 2 * 64 + 4  # input crop | reconstruction
    assert "16 tokens" in page and "PSNR" in page
    assert "nowhere: not loaded" in page
    assert "warning: tokenizer " in capsys.readouterr().err  # and said where the user looks


def test_report_into_the_dataset_root_is_refused(report):
    from prism4m.errors import UserError
    from prism4m.report.html import build_report

    _, _, root, _ = report
    with pytest.raises(UserError, match="that is the dataset root"):
        build_report(root, root, n_samples=1)
    assert not (Path(root) / "index.html").exists() and not (Path(root) / "assets").exists()
