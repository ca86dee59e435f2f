"""`prism4m tokenize ROOT -t DIR` with card-less ml-4m checkpoints: ml-4m's ids in ml-4m's folders.

A small root is ingested from the fixture scenes (tests/fixtures/ml4m_tokenizers: the photos
at a short side of 160); its depth, semseg_coco and dinov2 labels are the fixture's inputs.
Crop row 0 (the centred square, the same rectangle ml-4m's CenterCropImageAugmenter gives)
must get exactly the ids ml-4m computed; every row has ml-4m's dtype and shape.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from prism4m.cli import app
from prism4m.contract.members import decode_npy, encode_npy
from prism4m.contract.store import DatasetStore, Member, content_hash

FX = Path(__file__).parent / "fixtures" / "ml4m_tokenizers"
PHOTOS = ("astronaut", "chelsea", "coffee")
runner = CliRunner()


def _scene(name: str) -> Image.Image:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)())
    w, h = img.size
    s = 160 / min(h, w)
    return img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)


def _commit(store: DatasetStore, folder: str, members: dict[str, tuple[str, bytes]]) -> None:
    keys = [m.key for m in store.iter_shard("rgb", 0)]
    producer = {"name": folder, "kind": "labeler", "class": "ml-4m fixture", "version": "1", "config": {}}
    store.commit_unit(0, {folder: [Member(k, *members[k]) for k in keys]},
                      {folder: {"producer": producer, "inputs": {"rgb": content_hash(store.ledger("rgb")[0])}}},
                      {folder: []})


@pytest.fixture(scope="module")
def official_root(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("official")
    src = tmp / "src"
    src.mkdir()
    for p in PHOTOS:
        _scene(p).save(src / f"{p}.png")
    root = str(tmp / "ds")
    res = runner.invoke(app, ["ingest", str(src), root, "--shard-size", "3", "--short-side", "160",
                              "--n-crops", "3", "-q"])
    assert res.exit_code == 0, res.output
    store = DatasetStore(root)
    key_of = {}
    for m in store.iter_shard("source", 0):
        uri = json.loads(m.data)["uri"]
        key_of[next(p for p in PHOTOS if f"/{p}.png" in uri)] = m.key
    sizes = {m.key: Image.open(io.BytesIO(m.data)).size[::-1] for m in store.iter_shard("rgb", 0)}
    for p in PHOTOS:  # the rgb the labels belong to has the scene's size
        assert tuple(sizes[key_of[p]]) == tuple(np.asarray(Image.open(FX / "_inputs" / p / "depth.png")).shape)
    for folder in ("depth", "semseg_coco"):
        _commit(store, folder, {key_of[p]: ("png", (FX / "_inputs" / p / f"{folder}.png").read_bytes())
                                for p in PHOTOS})
    fmap = np.load(FX / "dinov2" / "features.npy")          # (3, 256, 24) float16
    glob = np.load(FX / "dinov2_global" / "features.npy")   # (3, 1, 24) float16
    _commit(store, "dinov2", {key_of[p]: ("npy", encode_npy(np.concatenate([glob[i], fmap[i]])))
                              for i, p in enumerate(PHOTOS)})
    return {"root": root, "key_of": key_of}


def _tokens(root: str, folder: str) -> dict[str, np.ndarray]:
    return {m.key: decode_npy(m.data) for m in DatasetStore(root).iter_shard(folder, 0)}


def test_cli_tokenize_official_row0_equals_ml4m(official_root):
    root, key_of = official_root["root"], official_root["key_of"]
    res = runner.invoke(app, ["tokenize", root, "-t", str(FX / "semseg"), "-t", str(FX / "depth"),
                              "-t", str(FX / "dinov2"), "-t", str(FX / "dinov2_global"), "-q"])
    assert res.exit_code == 0, res.output
    expect = {"tok_semseg@224": ("semseg", 196), "tok_depth@224": ("depth", 196),
              "tok_dinov2@224": ("dinov2", 256), "tok_dinov2_global": ("dinov2_global", 16)}
    for folder, (family, n) in expect.items():
        want = np.load(FX / family / "tokens.npy")
        got = _tokens(root, folder)
        for i, p in enumerate(PHOTOS):
            ids = got[key_of[p]]
            assert ids.dtype == np.int16 and ids.shape == (3, n), (folder, ids.dtype, ids.shape)
            ml4m_row0 = want[i, 0] if want.ndim == 3 else want[i]
            assert (ids[0] == ml4m_row0).all(), (folder, p)
        if family == "dinov2_global":  # a global embedding has no crop: same ids on every row
            assert all((v == v[0]).all() for v in got.values())
    rec = DatasetStore(root).record("tok_depth@224", 0)
    prod = rec["producer"]
    assert prod["type"] == "ml4m" and prod["official_id"] == "EPFL-VILAB/4M_tokenizers_depth_8k_224-448"
    import hashlib
    assert prod["weights_sha256"] == hashlib.sha256((FX / "depth" / "model.safetensors").read_bytes()).hexdigest()
    assert prod["vocab_size"] == 256 and prod["n_tokens"] == 196
    # the rest of the tool reads the root as any other: status, the report
    res = runner.invoke(app, ["status", root, "--json"])
    assert res.exit_code == 0, res.output
    folders = {f["folder"] if isinstance(f, dict) else f for f in json.loads(res.output)["folders"]}
    assert {"tok_depth@224", "tok_dinov2@224", "tok_dinov2_global"} <= set(folders), sorted(folders)
    res = runner.invoke(app, ["report", root, "-o", str(Path(root).parent / "report"), "-n", "3"])
    assert res.exit_code == 0, res.output
    assert "tok_depth@224" in (Path(root).parent / "report" / "index.html").read_text()


def test_cli_official_depth_version_and_refusals(official_root, tmp_path):
    root = official_root["root"]
    # the Pillow-10 resize rule is another tokenizer: its tokens replace the folder's and the
    # earlier ones are kept as a version
    res = runner.invoke(app, ["tokenize", root, "-t", f"depth:nearest={FX / 'depth_pillow10'}", "-q"])
    assert res.exit_code == 0, res.output
    want = np.load(FX / "depth_pillow10" / "tokens.npy")
    got = _tokens(root, "tok_depth@224")
    key_of = official_root["key_of"]
    assert all((got[key_of[p]][0] == want[i, 0]).all() for i, p in enumerate(PHOTOS))
    assert any(f.startswith("tok_depth@224~") for f in DatasetStore(root).ledger_folders())
    # human poses: refused before any work, with the reason
    rec = json.loads((FX / "published_state_dicts.json").read_text())["human_poses"]
    d = tmp_path / "4M_tokenizers_human-poses_1k_8"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(rec["config"], domain=rec["domain"])))
    (d / "model.safetensors").write_bytes((FX / "dinov2_global" / "model.safetensors").read_bytes())
    res = runner.invoke(app, ["tokenize", root, "-t", str(d)])
    assert res.exit_code == 2 and "SMPL" in res.output and "COCO keypoints" in res.output, res.output


def test_trainer_takes_official_vocabularies_from_the_root(official_root):
    """The trainer sizes each modality by the tokenizer that wrote it (the fixtures' tiny
    codebooks here; 16384 for the published rgb one), never by ml-4m's default table."""
    from prism4m.trainer.modalities import build_registry

    root = official_root["root"]
    if not DatasetStore(root).ledger("tok_depth@224"):
        res = runner.invoke(app, ["tokenize", root, "-t", str(FX / "depth"), "-t", str(FX / "dinov2_global"), "-q"])
        assert res.exit_code == 0, res.output
    reg = build_registry(["tok_depth@224", "tok_dinov2_global"], root=root)
    codebook = {f: json.loads((FX / f / "config.json").read_text())["codebook_size"] for f in ("depth", "dinov2_global")}
    assert reg["tok_depth@224"].vocab_size == codebook["depth"] == 256  # ml-4m's table says 8192
    assert reg["tok_depth@224"].num_tokens == 196
    assert reg["tok_dinov2_global"].vocab_size == codebook["dinov2_global"] == 64
    assert reg["tok_dinov2_global"].num_tokens == 16 and reg["tok_dinov2_global"].type == "global"


def test_cli_tokenize_official_sam_instance_then_export(official_root, tmp_path):
    """ml-4m's SAM-instance tokenizer through `prism4m tokenize -t DIR`: sam_instance@224/KEY.json
    as our mask tokenizers write it, 16 ids per kept instance, crop row 0's ids ml-4m's; then
    `prism4m export --format ml4m-sam` reads it back in ml-4m's pickled layout."""
    from prism4m.modality.instances import crop_instances, decode_label, read_member

    root, key_of = official_root["root"], official_root["key_of"]
    store = DatasetStore(root)
    labels = {p: (FX / "_inputs" / p / "sam_instance.json").read_bytes() for p in PHOTOS}
    _commit(store, "sam_instance", {key_of[p]: ("json", labels[p]) for p in PHOTOS})
    res = runner.invoke(app, ["tokenize", root, "-t", str(FX / "sam_instance"), "-q"])
    assert res.exit_code == 0, res.output

    want = np.load(FX / "sam_instance" / "tokens.npy")
    counts = json.loads((FX / "sam_instance" / "inputs.json").read_text())["counts"]
    starts = np.cumsum([0] + [sum(c) for c in counts])
    rows = {m.key: decode_npy(m.data) for m in store.iter_shard("crop_settings", 0)}
    members = {m.key: m for m in store.iter_shard("sam_instance@224", 0)}
    assert {m.ext for m in members.values()} == {"json"}
    for i, p in enumerate(PHOTOS):
        crops = read_member(members[key_of[p]].data)
        root_rows = rows[key_of[p]]
        assert len(crops) == len(root_rows)
        cut = crop_instances(decode_label(labels[p]), root_rows, 224)
        assert [len(c["token_ids"]) for c in crops] == cut.counts and sum(cut.counts) > 0
        for c in crops:
            assert c["token_ids"].shape == (len(c["bbox"]), 16) and (c["token_ids"] < 256).all()
        # crop row 0 is the fixture's row 0 (the centred square): ml-4m's ids for its instances
        fx_rows = np.load(FX / "_inputs" / p / "crop_settings_scene.npy")
        assert (root_rows[0] == fx_rows[0]).all()
        ml4m_row0 = want[starts[i]:starts[i] + counts[i][0]]
        assert np.array_equal(crops[0]["token_ids"], ml4m_row0), p
    prod = store.record("sam_instance@224", 0)["producer"]
    assert prod["type"] == "ml4m" and prod["official_id"] == "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64"
    assert (prod["instance_codes"], prod["tokens_per_instance"], "n_tokens" in prod) == (256, 16, False)

    out = tmp_path / "ml4m"
    res = runner.invoke(app, ["export", root, "--format", "ml4m-sam", "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "_export.json").read_text())
    assert summary["source_folder"] == "sam_instance@224" and summary["rows"] == len(PHOTOS)
    import tarfile

    with tarfile.open(out / "sam_instance" / "shard-000000.tar") as tar:
        exported = {n.name[:-4]: tar.extractfile(n).read() for n in tar.getmembers()}
    for p in PHOTOS:
        sample = np.load(io.BytesIO(exported[key_of[p]]), allow_pickle=True)  # ml-4m's reader (test only)
        for entry, c in zip(sample, read_member(members[key_of[p]].data), strict=True):
            ids = entry["token_ids"].astype(np.int32)
            assert ids.shape == (len(entry["bbox"]), 16)
            np.testing.assert_array_equal(ids, c["token_ids"])
            np.testing.assert_array_equal(entry["bbox"], c["bbox"])
