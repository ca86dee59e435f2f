"""imagebind labeler: ImageBind-named weights converted to open_clip's VisionTransformer, and
open_clip-format weights; each checked against a computation that shares no code with it.

- Conversion: a tiny state dict with facebookresearch/ImageBind's key names and shapes
  (tests/model_fixtures_imagebind.py) is converted, loaded strictly into open_clip, and the
  result compared with ImageBind's vision path written out here from its module definitions
  (PadIm2Video repeat ×2 → Conv3d with stride = kernel → [cls; tokens] + pos → LayerNorm →
  blocks x + attn(norm_1 x), x + mlp(norm_2 x) → head LayerNorm → CLS @ Linear), with plain
  torch functions (F.conv3d, F.layer_norm, a hand-written attention).
  Tolerance ATOL_F32 = 1e-4 (float32 throughout: the paths differ in summation order only —
  the Conv3d over two equal frames vs one Conv2d with the summed kernel, SDPA vs softmax(QKᵀ)V;
  measured ~1e-6; tokens are O(1) after the LayerNorms).
- Reference equivalence (open_clip format): the member decoded from float16 vs open_clip's
  own `create_model_and_transforms` preprocess + `visual.forward_intermediates(
  normalize_intermediates=True, output_extra_tokens=True)` (CLS prefix token and patch map
  after ln_post) on photos already at the model's 56 px (no resize in either path): relative L2
  ≤ FP16_REL = 1e-3 per row group — float16 storage alone is ≤ 2^-11 ≈ 4.9e-4 per element.
- End to end: `prism4m label -m imagebind` on the shared photo root, `prism4m tokenizer train`
  for imagebind (4×4 map at 56 px) and imagebind_global, `prism4m tokenize`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

import model_fixtures_imagebind as fx
from prism4m.contract.members import decode_npy
from prism4m.errors import UserError
from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.labelers.imagebind import (
    OPENAI_MEAN, OPENAI_STD, ImagebindLabeler, build_visual, imagebind_to_open_clip, load_vision_state)
from prism4m.labelers.registry import get_labeler_class
from prism4m.labelers.torch_batching import images_to_batch
from prism4m.labelers.weights import weights_digest
from prism4m.modality.cropping import split_features

ATOL_F32 = 1e-4
FP16_REL = 1e-3
EPS = 1e-6
ROWS = 1 + fx.GRID * fx.GRID

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ib_dir(tmp_path_factory) -> str:
    return fx.build_imagebind_tiny(tmp_path_factory.mktemp("imagebind_tiny"))


@pytest.fixture(scope="module")
def ib_file(ib_dir) -> str:
    return str(Path(ib_dir) / "imagebind_tiny.pth")


@pytest.fixture(scope="module")
def lab(ib_file) -> ImagebindLabeler:
    lab = ImagebindLabeler({"checkpoint": ib_file, "num_heads": fx.HEADS})
    lab.ensure_setup()
    return lab


def run(lab, *images) -> list[np.ndarray]:
    return [decode_npy(b) for b in lab.label_batch([LabelInput(f"k{i}", im) for i, im in enumerate(images)])]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def imagebind_reference(sd: dict, x: torch.Tensor, heads: int, eps: float = EPS):
    """ImageBind's vision path from its module definitions, on ImageBind-named tensors.
    Returns (trunk output, head-LayerNorm output, 1024-style projected CLS), all (B, …)."""
    pre, trunk, head = fx.PRE, fx.TRUNK, fx.HEAD
    stem = sd[pre + "rgbt_stem.proj.1.weight"]
    video = x.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # PadIm2Video(ntimes=2, pad_type="repeat")
    t = F.conv3d(video, stem, stride=tuple(stem.shape[2:]))  # (B, D, 1, h, w)
    t = t.flatten(2).transpose(1, 2)
    b, _, d = t.shape
    t = torch.cat([sd[pre + "cls_token"].expand(b, -1, -1), t], dim=1) + sd[pre + "pos_embedding_helper.pos_embed"]

    def ln(z, p):
        return F.layer_norm(z, (d,), sd[p + ".weight"], sd[p + ".bias"], eps)

    def split(z):
        return z.reshape(b, -1, heads, d // heads).transpose(1, 2)

    t = ln(t, trunk + "pre_transformer_layer.0")
    n_blocks = len({k.split(".")[3] for k in sd if k.startswith(trunk + "blocks.")})
    for i in range(n_blocks):
        p = f"{trunk}blocks.{i}."
        q, k, v = (ln(t, p + "norm_1") @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
        a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ split(v)
        t = t + a.transpose(1, 2).reshape(b, -1, d) @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.gelu(ln(t, p + "norm_2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        t = t + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    normed = ln(t, head + "0")
    return t, normed, normed[:, 0] @ sd[head + "2.weight"].T


def pixels(*images) -> torch.Tensor:
    """ImageBind's ToTensor + Normalize(OpenAI mean/std) on images already 56×56."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(OPENAI_MEAN)[:, None, None]) / torch.tensor(OPENAI_STD)[:, None, None]


def small(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((fx.SIZE, fx.SIZE), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------------- registry
def test_registry_resources_and_config():
    assert get_labeler_class("imagebind") is ImagebindLabeler
    r = ImagebindLabeler({"checkpoint": "x"}).resources
    assert 0 < r.num_gpus <= 1 and r.batch_size >= 1
    with pytest.raises(UserError, match=r"imagebind\.num_heads"):
        ImagebindLabeler({"checkpoint": "x", "num_heads": 0})


# ---------------------------------------------------------------------------------- conversion
def test_conversion_renames_every_vision_tensor_and_ignores_other_modalities():
    sd = fx.imagebind_state_dict()
    conv = imagebind_to_open_clip(sd)
    n_vision = sum(k.startswith((fx.PRE, fx.TRUNK, fx.HEAD)) for k in sd)
    assert len(conv) == n_vision  # one open_clip tensor per ImageBind vision tensor, nothing else
    assert conv["class_embedding"].shape == (fx.WIDTH,)
    assert conv["positional_embedding"].shape == (ROWS, fx.WIDTH)
    assert conv["conv1.weight"].shape == (fx.WIDTH, 3, fx.PATCH, fx.PATCH)
    assert torch.equal(conv["proj"], sd[fx.HEAD + "2.weight"].T)
    # and it loads strictly into open_clip's own VisionTransformer of that geometry
    visual = build_visual(conv, fx.HEADS, EPS)
    assert visual.grid_size == (fx.GRID, fx.GRID) and visual.output_dim == fx.OUT
    assert {m.eps for m in visual.modules() if isinstance(m, torch.nn.LayerNorm)} == {EPS}


def test_summed_conv2d_stem_equals_conv3d_over_the_two_frame_repeat():
    sd = fx.imagebind_state_dict()
    visual = build_visual(imagebind_to_open_clip(sd), fx.HEADS, EPS)
    x = torch.randn(2, 3, fx.SIZE, fx.SIZE, generator=torch.Generator().manual_seed(1))
    w3 = sd[fx.PRE + "rgbt_stem.proj.1.weight"]
    ref = F.conv3d(x.unsqueeze(2).repeat(1, 1, 2, 1, 1), w3, stride=tuple(w3.shape[2:]))[:, :, 0]
    with torch.no_grad():
        ours = visual.conv1(x)
    assert ours.shape == ref.shape == (2, fx.WIDTH, fx.GRID, fx.GRID)
    assert torch.allclose(ours, ref, atol=ATOL_F32, rtol=0), (ours - ref).abs().max()
    # one time slice alone is not the same map: the sum matters
    one = F.conv2d(x, w3[:, :, 0], stride=fx.PATCH)
    assert (one - ref).abs().max() > 100 * ATOL_F32


def test_converted_tower_equals_imagebind_s_vision_path():
    sd = fx.imagebind_state_dict()
    visual = build_visual(imagebind_to_open_clip(sd), fx.HEADS, EPS).eval()
    x = pixels(small(data.astronaut()), small(data.coffee()))
    trunk, normed, emb = imagebind_reference(sd, x, fx.HEADS)
    with torch.no_grad():
        out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True, output_extra_tokens=True)
        cls = out["image_intermediates_prefix"][-1][:, 0]
        patches = out["image_intermediates"][-1].flatten(2).transpose(1, 2)  # NCHW → (B, h·w, C) row-major
        assert torch.allclose(cls, normed[:, 0], atol=ATOL_F32) and torch.allclose(patches, normed[:, 1:], atol=ATOL_F32)
        assert torch.allclose(out["image_features"], emb, atol=ATOL_F32)  # head Linear == open_clip proj
    assert (normed[0] - normed[1]).abs().max() > 0.1  # the images give different tokens


def test_labeler_rows_are_imagebind_s_head_layernorm_of_cls_and_patches(lab, ib_file):
    imgs = [small(data.astronaut()), small(data.chelsea())]
    sd = fx.imagebind_state_dict()
    trunk, normed, _ = imagebind_reference(sd, pixels(*imgs), fx.HEADS)
    feats = lab.features(imgs)  # float32, before the float16 member
    assert feats.shape == (2, ROWS, fx.WIDTH)
    assert np.allclose(feats, normed.numpy(), atol=ATOL_F32)
    arr = run(lab, *imgs)[0]
    assert arr.dtype == np.float16 and arr.shape == (ROWS, fx.WIDTH)
    glob, fmap = split_features(arr.astype(np.float32))  # the tokenizers' reading of the member
    assert rel(glob, normed[0, 0].numpy()) <= FP16_REL
    assert rel(fmap, normed[0, 1:].reshape(fx.GRID, fx.GRID, fx.WIDTH).numpy()) <= FP16_REL
    raw = ImagebindLabeler({"checkpoint": ib_file, "num_heads": fx.HEADS, "head_norm": False})
    assert np.allclose(raw.features(imgs), trunk.numpy(), atol=ATOL_F32)
    assert raw.model_provenance()["head_norm"] is False


def test_safetensors_of_the_state_dict_loads_the_same_model(lab, tmp_path):
    from safetensors.torch import save_file

    save_file(fx.imagebind_state_dict(), str(tmp_path / "imagebind.safetensors"))
    assert load_vision_state(tmp_path / "imagebind.safetensors").keys() == load_vision_state(
        Path(lab.config.checkpoint)).keys()
    by_st = ImagebindLabeler({"checkpoint": str(tmp_path / "imagebind.safetensors"), "num_heads": fx.HEADS})
    img = data.rocket()
    assert np.array_equal(run(by_st, img)[0], run(lab, img)[0])  # same weights, same batch
    assert by_st.model_provenance()["random_weights"] is False  # no marker next to this file


def test_unknown_vision_key_or_wrong_stem_is_a_user_error_naming_it(tmp_path):
    sd = fx.imagebind_state_dict()
    sd[fx.TRUNK + "blocks.0.layer_scale_gamma1"] = torch.ones(1, 1, fx.WIDTH)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(UserError, match=r"odd\.pth.*blocks\.0\.layer_scale_gamma1"):
        ImagebindLabeler({"checkpoint": str(tmp_path / "odd.pth"), "num_heads": fx.HEADS}).ensure_setup()
    sd = fx.imagebind_state_dict()
    sd[fx.PRE + "rgbt_stem.proj.1.weight"] = sd[fx.PRE + "rgbt_stem.proj.1.weight"][:, :, :1]
    with pytest.raises(UserError, match=r"rgbt_stem\.proj\.1\.weight"):
        imagebind_to_open_clip(sd, "x.pth")
    with pytest.raises(UserError, match=r"imagebind\.num_heads 5"):
        build_visual(imagebind_to_open_clip(fx.imagebind_state_dict()), 5, EPS)


def test_image_size_override_interpolates_the_position_embedding(ib_file):
    big = ImagebindLabeler({"checkpoint": ib_file, "num_heads": fx.HEADS, "image_size": 84})
    arr = run(big, data.chelsea())[0]
    assert arr.shape == (1 + 6 * 6, fx.WIDTH)
    assert big.model_provenance()["grid"] == [6, 6]


def test_center_crop_sees_only_the_centred_square(lab):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (56, 112, 3), dtype=np.uint8)  # centred square: columns 28..83
    outside, inside = img.copy(), img.copy()
    outside[:, :28], outside[:, 84:] = 0, 255
    inside[10:20, 40:50] = 0
    base, out_changed, in_changed = run(lab, img, outside, inside)
    assert np.array_equal(base, out_changed) and not np.array_equal(base, in_changed)


def test_batching_does_not_change_results(lab):
    imgs = [data.astronaut()[:300, :200], data.coffee(), data.rocket()]
    together = run(lab, *imgs)
    for t, im in zip(together, imgs):
        assert np.allclose(t.astype(np.float32), run(lab, im)[0].astype(np.float32), atol=1e-2)


def test_provenance_records_random_weights_format_and_hash(lab, ib_file):
    prov = lab.model_provenance()
    assert prov["random_weights"] is True and prov["model_id"] == ib_file
    assert prov["weights_sha256"] == weights_digest(Path(ib_file))
    assert prov["weights_format"] == "imagebind" and prov["num_heads"] == fx.HEADS
    assert prov["width"] == fx.WIDTH and prov["layers"] == fx.LAYERS and prov["layer_norm_eps"] == EPS
    assert prov["input_size"] == [fx.SIZE, fx.SIZE] and prov["grid"] == [fx.GRID, fx.GRID]
    assert {m.eps for m in lab.visual.modules() if isinstance(m, torch.nn.LayerNorm)} == {EPS}


def test_a_corrupt_weights_file_is_one_user_error_naming_it(tmp_path):
    (tmp_path / "imagebind_huge.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match=r"imagebind_huge\.pth: not a readable weights file"):
        ImagebindLabeler({"checkpoint": str(tmp_path / "imagebind_huge.pth")}).ensure_setup()


@pytest.mark.parametrize("checkpoint", [None, "/nonexistent/imagebind_huge.pth"])
def test_missing_weights_names_the_config_key(checkpoint):
    with pytest.raises(MissingWeightsError, match=r"labelers\.imagebind\.checkpoint"):
        ImagebindLabeler({"checkpoint": checkpoint}).ensure_setup()


# ---------------------------------------------------------------------------------- open_clip format
@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory) -> str:
    return fx.build_imagebind_open_clip_tiny(tmp_path_factory.mktemp("imagebind_open_clip"))


def test_open_clip_format_equals_open_clip_forward_intermediates_to_fp16(oc_dir):
    """Reference equivalence: open_clip's own loader + preprocess + forward_intermediates on
    56-px photos (64×84 for coffee: open_clip's CenterCrop cuts crop row 0's square)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc_dir}")
    model.eval()
    photos = {"astronaut": small(data.astronaut()), "chelsea": small(data.chelsea()),
              "coffee": np.asarray(Image.fromarray(data.coffee()).resize((84, 56), Image.Resampling.BICUBIC))}
    lab = ImagebindLabeler({"checkpoint": oc_dir})
    ours = dict(zip(photos, (a.astype(np.float32) for a in run(lab, *photos.values()))))
    for name, img in photos.items():
        x = preprocess(Image.fromarray(img))[None]
        with torch.no_grad():
            out = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True,
                                                     output_extra_tokens=True, output_fmt="NLC")
        cls, patches = out["image_intermediates_prefix"][-1][0, 0].numpy(), out["image_intermediates"][-1][0].numpy()
        assert ours[name].shape == (ROWS, fx.WIDTH)
        assert rel(ours[name][0], cls) <= FP16_REL, (name, rel(ours[name][0], cls))
        assert rel(ours[name][1:], patches) <= FP16_REL, (name, rel(ours[name][1:], patches))
    assert rel(ours["coffee"], ours["astronaut"]) > 100 * FP16_REL  # photos differ by far more
    prov = lab.model_provenance()
    assert prov["weights_format"] == "open_clip" and prov["random_weights"] is True
    assert prov["open_clip_config"]["model_cfg"]["vision_cfg"]["patch_size"] == fx.PATCH
    # eps is the labeler's setting, whatever the architecture file says
    lab5 = ImagebindLabeler({"checkpoint": oc_dir, "layer_norm_eps": 1e-5})
    lab5.ensure_setup()
    assert {m.eps for m in lab5.visual.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}


# ---------------------------------------------------------------------------------- end to end
def test_label_train_and_tokenize_imagebind_through_the_cli(photo_root, ib_file, tmp_path):
    """`prism4m label -m imagebind` on the photo root, feature and global tokenizers trained on
    those labels, `prism4m tokenize` writes tok_imagebind@56 (4×4 ids) and tok_imagebind_global."""
    import yaml

    from cli_run import ok
    from prism4m.contract.store import DatasetStore

    root = str(tmp_path / "ds")
    shutil.copytree(photo_root, root)
    cfg = tmp_path / "labels.yaml"
    cfg.write_text(yaml.safe_dump({"imagebind": {"checkpoint": ib_file, "num_heads": fx.HEADS, "num_gpus": 0}}))
    ok("label", root, "-m", "imagebind", "--config-file", cfg, "-w", "1", "-q")
    store = DatasetStore(root)
    first = next(iter(store.iter_shard("imagebind", 0)))
    arr = decode_npy(first.data)
    assert arr.dtype == np.float16 and arr.shape == (ROWS, fx.WIDTH)
    tiny = ["steps=2", "batch_size=4", "codebook_size=64", "max_train_crops=64", "max_eval_crops=16"]
    sets = [x for item in tiny for x in ("--set", item)]
    toks = {m: str(tmp_path / m) for m in ("imagebind", "imagebind_global")}
    said = ok("tokenizer", "train", root, "-m", "imagebind", "-o", toks["imagebind"], "-q", *sets,
              "--set", f"input_size={fx.SIZE}")
    ok("tokenizer", "train", root, "-m", "imagebind_global", "-o", toks["imagebind_global"], "-q", *sets)
    assert "RANDOM WEIGHTS" in said
    card = json.loads(Path(toks["imagebind"], "card.json").read_text())
    assert card["token_folder"] == f"tok_imagebind@{fx.SIZE}" and card["token_grid"] == [fx.GRID, fx.GRID]
    ok("tokenize", root, "-t", toks["imagebind"], "-t", toks["imagebind_global"], "-w", "1", "-q")
    n_rgb = sum(1 for i in store.ledger("rgb") for _ in store.iter_shard("rgb", i))
    for folder in (f"tok_imagebind@{fx.SIZE}", "tok_imagebind_global"):
        members = [m for i in sorted(store.ledger(folder)) for m in store.iter_shard(folder, i)]
        assert len(members) == n_rgb, folder
        ids = decode_npy(members[0].data)
        assert ids.dtype == np.int16 and (0 <= ids).all() and (ids < 64).all()
    assert decode_npy(members[0].data).shape[-1] == 16  # global: 16 tokens per crop
    status = ok("status", root)
    assert any(line.split()[:1] == ["imagebind"] and "[RANDOM WEIGHTS]" in line for line in status.splitlines())
