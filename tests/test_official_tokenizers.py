"""ml-4m's published tokenizers through prism4m: the ids are ml-4m's own.

The fixtures (tests/fixtures/ml4m_tokenizers, README there) were computed by apple/ml-4m's
classes and its save_vq_tokens.py preprocessing on tiny random-weight tokenizers of every
published family; here prism4m loads the same files and must give the same ids.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prism4m.tokenizers.fourm import (
    FAMILIES,
    OfficialConfigError,
    OfficialLoadError,
    load_official,
    parse_config,
)
from prism4m.tokenizers.fourm.load import DECODER_PREFIXES

FX = Path(__file__).parent / "fixtures" / "ml4m_tokenizers"
PIXEL = ["rgb", "depth", "depth_pillow10", "normal", "edge", "semseg"]
FEATURE = ["clip", "dinov2", "dinov2_global"]
#: a differing id is accepted only where the two best codes are this close (a float tie)
TIE_MARGIN = 1e-4
MAX_TIE_SHARE = 0.005


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def fixture_inputs(family: str, tok) -> torch.Tensor:
    """The encoder batch for a fixture family, built by prism4m from the fixture's inputs."""
    inp = json.loads((FX / family / "inputs.json").read_text())
    if "features" in inp:
        feats = np.load(FX / family / "features.npy")
        return tok.inputs(feats[:, 0] if feats.shape[1] == 1 else feats)
    xs = []
    for p in inp["photos"]:
        rows = np.load(FX / "_inputs" / p / f"crop_settings_{inp['crop_settings']}.npy")
        if family == "rgb":
            label = _photo(p)
        else:
            label = np.array(Image.open(FX / "_inputs" / p / f"{inp['task']}.png"))
        xs.append(tok.inputs(label, rows, inp["input_size"]))
    return torch.cat(xs)


def test_fixture_photos_unchanged():
    """The rgb fixture reads scikit-image's photos by reference: they must be the ones hashed."""
    import hashlib

    for meta in json.loads((FX / "_inputs" / "photos.json").read_text()):
        a = _photo(meta["name"])
        h = hashlib.sha256()
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
        assert h.hexdigest() == meta["sha256"], f"scikit-image's {meta['name']} changed; regenerate the fixtures"


@pytest.mark.parametrize("family", PIXEL + FEATURE)
def test_ids_equal_ml4m(family):
    torch.set_num_threads(1)
    kw = {"depth_resample": "nearest"} if family == "depth_pillow10" else {}
    tok = load_official(str(FX / family), **kw)
    want = np.load(FX / family / "tokens.npy")
    x = fixture_inputs(family, tok)
    got = tok.encode(x).reshape(want.shape)
    assert got.dtype == np.int64 and want.dtype == np.int16
    diff = got != want
    n_diff = int(diff.sum())
    if n_diff:
        margins = tok.margins(x).reshape(want.shape)
        not_ties = int((diff & (margins >= TIE_MARGIN)).sum())
        assert not_ties == 0 and n_diff <= MAX_TIE_SHARE * want.size, (
            f"{family}: {n_diff} of {want.size} ids differ from ml-4m's, {not_ties} of them not float ties")


@pytest.mark.parametrize("family", PIXEL)
def test_preprocessing_equals_ml4m(family):
    """Checked apart from the ids: the tensor fed to the encoder has ml-4m's shape and, per
    crop, the same sum and sum of squares (bit-exact on this machine; 1e-6 relative allowed)."""
    kw = {"depth_resample": "nearest"} if family == "depth_pillow10" else {}
    tok = load_official(str(FX / family), **kw)
    stats = json.loads((FX / family / "input_stats.json").read_text())
    x = fixture_inputs(family, tok)
    assert list(x.shape) == stats["shape"] and str(x.dtype).replace("torch.", "") == stats["dtype"]
    xd = x.double().flatten(1)
    np.testing.assert_allclose(xd.sum(1).numpy(), stats["per_crop_sum"], rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose((xd ** 2).sum(1).numpy(), stats["per_crop_sumsq"], rtol=1e-6, atol=1e-3)


def test_depth_resample_matters():
    """Pillow ≤ 10.4 resized I;16 depth with NEAREST, Pillow ≥ 11 with BICUBIC (README): the
    two fixtures differ, and each is reproduced only by its own setting."""
    a = np.load(FX / "depth" / "tokens.npy")
    b = np.load(FX / "depth_pillow10" / "tokens.npy")
    assert (a != b).sum() > 0
    tok = load_official(str(FX / "depth"), depth_resample="nearest")
    assert (tok.encode(fixture_inputs("depth", tok)).reshape(b.shape) == b).all()


def test_tokenize_member_layout():
    tok = load_official(str(FX / "rgb"))
    rows = np.load(FX / "_inputs" / "astronaut" / "crop_settings_full.npy")
    ids = tok.tokenize(_photo("astronaut"), rows, 224)
    assert ids.dtype == np.int16 and ids.shape == (3, 196)
    assert (ids == np.load(FX / "rgb" / "tokens.npy")[0]).all()
    assert tok.vocab_size == 256 and tok.family.out_folder_for("rgb", 224) == "tok_rgb@224"


# ---------------------------------------------------------------------- published sizes
PUBLISHED = json.loads((FX / "published_state_dicts.json").read_text())


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_published_size_names_and_shapes(family):
    rec = PUBLISHED[family]
    cfg = dict(rec["config"], domain=rec["domain"])
    config = parse_config(cfg)
    assert config.family.hub_id == rec["hub_id"]
    with torch.device("meta"):
        model = config.build()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == rec["encoder_quantizer"]
    # everything else in the published file is a decoder, set aside by prefix
    assert all(p + "." in DECODER_PREFIXES for p in rec["full_model"]["other_key_prefixes"])


def test_published_sam_instance_architecture():
    """run_training_vqvae.py with the sam_instance yaml: a VQVAE on one-channel 64×64 masks,
    ViT-B patch 16 (4×4 = 16 ids per instance), post_mlp (argparse default; the yaml leaves
    it), 1024 codes of width 1024."""
    rec = PUBLISHED["sam_instance"]
    config = parse_config(dict(rec["config"], domain=rec["domain"]))
    assert config.family is FAMILIES["sam_instance"] and config.family.supported
    assert (config.vocab_size, config.mask_size, config.instance_grid) == (1024, 64, 4)
    eq = rec["encoder_quantizer"]
    assert eq["encoder.pos_emb"] == [1, 768, 4, 4] and eq["encoder.proj.weight"] == [768, 1, 16, 16]
    assert eq["quant_proj.weight"] == [1024, 768, 1, 1] and eq["quantize._codebook.embed"] == [1024, 1024]
    assert "encoder.post_mlp.fc1.weight" in eq and rec["model_type"] == "VQVAE"


def test_published_vocab_and_tokens():
    want = {"rgb": (16384, 196), "depth": (8192, 196), "normal": (8192, 196), "edge": (8192, 196),
            "semseg": (4096, 196), "clip": (8192, 196), "dinov2": (8192, 256), "imagebind": (8192, 256),
            "dinov2_global": (8192, 16), "imagebind_global": (8192, 16)}
    for fam, (vocab, n) in want.items():
        config = parse_config(dict(PUBLISHED[fam]["config"], domain=PUBLISHED[fam]["domain"]))
        assert (config.vocab_size, config.n_tokens(224)) == (vocab, n), fam


# ---------------------------------------------------------------------- SAM instances
def sam_fixture() -> dict:
    """The sam_instance fixture: per photo its label (sam_instance.json) and crop rows, the
    masks prism4m cut from them that ml-4m tokenized (masks.npz), ml-4m's ids (tokens.npy)."""
    from prism4m.modality.instances import decode_label

    inp = json.loads((FX / "sam_instance" / "inputs.json").read_text())
    z = np.load(FX / "sam_instance" / "masks.npz")
    shape = tuple(int(v) for v in z["shape"])
    masks = np.unpackbits(z["masks"], axis=-1)[..., :shape[-1]].reshape(shape)
    return {"photos": inp["photos"], "counts": inp["counts"], "masks": masks, "bboxes": z["bboxes"],
            "tokens": np.load(FX / "sam_instance" / "tokens.npy"),
            "labels": {p: decode_label((FX / "_inputs" / p / "sam_instance.json").read_bytes())
                       for p in inp["photos"]},
            "rows": {p: np.load(FX / "_inputs" / p / "crop_settings_scene.npy") for p in inp["photos"]}}


def test_sam_instance_cut_is_the_fixtures():
    """prism4m's cut of the fixture labels still gives the masks ml-4m tokenized (else the id
    comparison below would compare different inputs)."""
    from prism4m.modality.instances import crop_instances

    fx = sam_fixture()
    got = [crop_instances(fx["labels"][p], fx["rows"][p], 224) for p in fx["photos"]]
    assert [c.counts for c in got] == fx["counts"]
    assert (np.concatenate([c.masks for c in got]) == fx["masks"]).all()
    assert (np.concatenate([c.bboxes for c in got]) == fx["bboxes"]).all()
    assert fx["masks"].shape == (sum(map(sum, fx["counts"])), 1, 64, 64) and 0.2 < fx["masks"].mean() < 0.8


def test_sam_instance_ids_equal_ml4m():
    """Labels → prism4m's cut → ml-4m's mask input (0.0/1.0 float32) → ml-4m's ids (ties aside)."""
    torch.set_num_threads(1)
    fx = sam_fixture()
    tok = load_official(str(FX / "sam_instance"))
    x = torch.cat([tok.inputs(fx["labels"][p], fx["rows"][p], 224) for p in fx["photos"]])
    stats = json.loads((FX / "sam_instance" / "input_stats.json").read_text())
    assert list(x.shape) == stats["shape"] and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}
    assert x.double().flatten(1).sum(1).tolist() == stats["per_mask_sum"]
    want = fx["tokens"]
    got = tok.encode(x)
    assert got.shape == want.shape == (len(x), 16)
    diff = got != want
    n_diff = int(diff.sum())
    if n_diff:
        margins = tok.margins(x)
        not_ties = int((diff & (margins >= TIE_MARGIN)).sum())
        assert not_ties == 0 and n_diff <= MAX_TIE_SHARE * want.size, (
            f"sam_instance: {n_diff} of {want.size} ids differ from ml-4m's, {not_ties} of them not float ties")
    # the fixture discriminates: ids vary, and the masks in rgb's [-1, 1] give other ids
    assert len(np.unique(want)) > 30
    assert (tok.encode(x * 2 - 1) != want).mean() > 0.3


def test_sam_instance_stage_adapter_member():
    """The stage's view: one encoder row per instance kept in a crop, the member our mask
    tokenizers write (KEY.json, 16 ids per instance), a card without n_tokens."""
    from prism4m.modality.instances import read_member
    from prism4m.pipeline.tokenize import tokenizer_producer
    from prism4m.tokenizers.fourm.adapter import OfficialStageTokenizer

    fx = sam_fixture()
    tok = OfficialStageTokenizer.load(str(FX / "sam_instance"))
    card = tok.card
    assert (card.modality, card.token_folder, card.n_tokens, card.token_grid) == \
        ("sam_instance", "sam_instance@224", None, [4, 4])
    assert (card.input_size, card.patch_size, card.vocab_size) == (224, 16, 256) and tok.member_ext == "json"
    prod = tokenizer_producer(card, card.token_folder)
    assert (prod["instance_codes"], prod["tokens_per_instance"], "n_tokens" in prod) == (256, 16, False)
    assert prod["official_id"] == "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64"
    at = 0
    for p, counts in zip(fx["photos"], fx["counts"]):
        label = fx["labels"][p]
        x, layout = tok.prepare_sample(label, fx["rows"][p], label.shape)
        assert x.dtype == np.float32 and x.shape == (sum(counts), 1, 64, 64) and layout.counts == counts
        ids = tok.encode(x)
        want = fx["tokens"][at:at + sum(counts)]
        at += sum(counts)
        assert (ids == want).all(), p
        crops = read_member(tok.member_bytes(ids, layout))
        assert [len(c["token_ids"]) for c in crops] == counts
        assert np.array_equal(np.concatenate([c["token_ids"] for c in crops]), want)
        assert all(c["token_ids"].shape[1:] == (16,) for c in crops)
    assert tok.encode(np.zeros((0, 1, 64, 64), np.float32)).shape == (0, 16)


def test_sam_instance_config_errors():
    rec = PUBLISHED["sam_instance"]
    with pytest.raises(OfficialConfigError, match="one-channel"):
        parse_config(dict(rec["config"], domain="sam_mask", n_channels=3))
    with pytest.raises(OfficialConfigError, match="one-channel"):
        parse_config(dict(rec["config"], domain="sam_mask", patch_proj=False))
    # without a domain, one channel at 64 px is the SAM-instance tokenizer
    cfg = {k: v for k, v in rec["config"].items()}
    assert parse_config(cfg).family is FAMILIES["sam_instance"]


# ---------------------------------------------------------------------- loading rules
def _copy(tmp_path: Path, family: str, name: str | None = None) -> Path:
    dst = tmp_path / (name or family)
    dst.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(FX / family / f, dst / f)
    return dst


def _rewrite_weights(d: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    edit(sd)
    save_file(sd, str(d / "model.safetensors"))


def test_strict_load_names_the_keys(tmp_path):
    d = _copy(tmp_path, "rgb")
    _rewrite_weights(d, lambda sd: (sd.pop("encoder.blocks.1.mlp.fc2.bias"),
                                    sd.__setitem__("encoder.extra.weight", torch.zeros(2))))
    with pytest.raises(OfficialLoadError) as e:
        load_official(str(d))
    msg = str(e.value)
    assert "missing keys: encoder.blocks.1.mlp.fc2.bias" in msg and "unexpected keys: encoder.extra.weight" in msg

    d2 = _copy(tmp_path, "rgb", "rgb2")
    _rewrite_weights(d2, lambda sd: sd.__setitem__("quant_proj.bias", torch.zeros(7)))
    with pytest.raises(OfficialLoadError, match=r"wrong shapes: quant_proj.bias \(7,\) \(expected \(32,\)\)"):
        load_official(str(d2))


def test_decoder_keys_set_aside(tmp_path):
    d = _copy(tmp_path, "semseg")
    _rewrite_weights(d, lambda sd: sd.update({"decoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3),
                                              "post_quant_proj.weight": torch.zeros(2, 2, 1, 1)}))
    tok = load_official(str(d))
    assert tok.decoder_keys_skipped == ["decoder.blocks.0.attn.qkv.weight", "post_quant_proj.weight"]


def test_family_from_path_or_hint(tmp_path):
    d = _copy(tmp_path, "normal", "models--EPFL-VILAB--4M_tokenizers_normal_8k_224-448")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["domain"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_official(str(d)).family.name == "normal"
    plain = tmp_path / "plain"
    shutil.copytree(d, plain)
    with pytest.raises(OfficialConfigError, match="rgb or normal"):
        load_official(str(plain))
    assert load_official(str(plain), family="normal").family.name == "normal"


def test_safetensors_only(tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(FX / "rgb" / "config.json", d / "config.json")
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(OfficialLoadError, match="safetensors only, never pickles"):
        load_official(str(d))


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfficialLoadError, match="HF_HUB_OFFLINE is set"):
        load_official("EPFL-VILAB/4M_tokenizers_rgb_16k_224-448")


def test_human_poses_refused():
    rec = PUBLISHED["human_poses"]
    config = parse_config(dict(rec["config"], domain=rec["domain"]))
    assert config.family is FAMILIES["human_poses"] and not config.family.supported
    assert "SMPL" in config.family.refusal and "COCO keypoints" in config.family.refusal


def test_config_errors():
    with pytest.raises(OfficialConfigError, match="not an ml-4m preset"):
        parse_config({"domain": "rgb", "enc_type": "vit_xs_enc"})
    with pytest.raises(OfficialConfigError, match="contradict"):
        parse_config({"domain": "rgb", "enc_type": "vit_b_enc", "enc_dim_tokens": 512})
    with pytest.raises(OfficialConfigError, match="Euclidean"):
        parse_config({"domain": "rgb", "norm_codes": False})


# ---------------------------------------------------------------------- the tokenize stage's view
@pytest.mark.parametrize("family", ["semseg", "depth", "normal", "edge"])
def test_stage_adapter_pixel_labels(family):
    """Labels as the stage decodes them (uint8/uint16 arrays) → ml-4m's ids, every crop row."""
    from prism4m.tokenizers.fourm.adapter import OfficialStageTokenizer

    tok = OfficialStageTokenizer.load(str(FX / family))
    inp = json.loads((FX / family / "inputs.json").read_text())
    want = np.load(FX / family / "tokens.npy")
    for i, p in enumerate(inp["photos"]):
        rows = np.load(FX / "_inputs" / p / "crop_settings_scene.npy")
        label = np.asarray(Image.open(FX / "_inputs" / p / f"{inp['task']}.png"))
        x, layout = tok.prepare_sample(label, rows, label.shape[:2])
        assert layout is None and (tok.encode(x) == want[i]).all(), (family, p)
    assert tok.card.type == "ml4m" and tok.card.weights["sha256"] == tok.official.weights_sha256
    assert tok.card.architecture["official_id"] == FAMILIES[family].hub_id


@pytest.mark.parametrize("family", ["clip", "dinov2", "dinov2_global"])
def test_stage_adapter_feature_labels(family):
    """prism4m's feature labels (1 + h·w, C), row 0 global, on the centred square: crop row 0
    gives ml-4m's ids for that map; other rows are resampled maps, still (n_crops, n_tokens)."""
    from prism4m.tokenizers.fourm.adapter import OfficialStageTokenizer

    tok = OfficialStageTokenizer.load(str(FX / family))
    feats = np.load(FX / family / "features.npy")
    want = np.load(FX / family / "tokens.npy")
    hw = (160, 240)
    rows = np.array([[0, 40, 160, 160, 0], [0, 10, 160, 200, 1], [5, 50, 150, 150, 0]])
    for i in range(len(feats)):
        c = feats.shape[2]
        if family == "dinov2_global":
            label = np.concatenate([feats[i], np.zeros((4, c), np.float16)])  # global + a 2×2 map
        else:
            label = np.concatenate([np.zeros((1, c), np.float16), feats[i]])
        x, _ = tok.prepare_sample(label.astype(np.float32), rows, hw)
        ids = tok.encode(x)
        assert ids.shape == (3, tok.card.n_tokens)
        assert (ids[0] == want[i]).all(), (family, i)
    folder = {"clip": "tok_clip@224", "dinov2": "tok_dinov2@224", "dinov2_global": "tok_dinov2_global"}[family]
    assert tok.card.token_folder == folder


def test_tokenizer_argument_requests(tmp_path):
    """`-t [NAME[:OPTION]=]LOCATION`: NAME picks the family (or the edge folder), depth takes
    its resize filter; a directory of ours (or nothing) is not an official request."""
    from prism4m.errors import UserError
    from prism4m.tokenizers.fourm.adapter import parse_request

    assert parse_request(str(FX / "rgb")).family is None
    r = parse_request(f"sam_edge={FX / 'edge'}")
    assert (r.family, r.label_folder) == ("edge", "sam_edge")
    assert r.card().token_folder == "tok_sam_edge@224" and r.card().modality == "sam_edge"
    r = parse_request(f"depth:nearest={FX / 'depth'}")
    assert r.depth_resample == "nearest" and r.card().normalisation["depth_resample"] == "nearest"
    assert r.card().card_hash() != parse_request(str(FX / "depth")).card().card_hash()
    assert parse_request(f"CLIP-B16={FX / 'clip'}").family == "clip"
    assert parse_request("EPFL-VILAB/4M_tokenizers_rgb_16k_224-448").location.startswith("EPFL-VILAB/")
    assert parse_request(str(tmp_path)) is None
    with pytest.raises(UserError, match="only depth takes one"):
        parse_request(f"rgb:nearest={FX / 'rgb'}")
    with pytest.raises(UserError, match="no config.json"):
        parse_request(f"rgb={tmp_path}")
