"""clip labeler: a tiny random open_clip ViT saved in open_clip's local-dir layout, loaded back
through the labeler's own loading path."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from skimage import data

import model_fixtures_sam_clip as fx
from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.labelers.clip import ClipLabeler
from prism4m.contract.members import decode_npy
from prism4m.labelers.registry import get_labeler_class
from prism4m.labelers.torch_batching import images_to_batch
from prism4m.labelers.weights import weights_digest

GRID, DIM = 4, 32  # tiny model: 64 px input, patch 16, 32-d embedding


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    return fx.build_clip_tiny(tmp_path_factory.mktemp("clip_tiny"))


@pytest.fixture(scope="module")
def lab(clip_dir) -> ClipLabeler:
    lab = ClipLabeler({"checkpoint": clip_dir})
    lab.ensure_setup()
    return lab


def run(lab, *images) -> list[np.ndarray]:
    out = lab.label_batch([LabelInput(f"k{i}", im) for i, im in enumerate(images)])
    return [decode_npy(b) for b in out]


def test_registry_and_resources():
    assert get_labeler_class("clip") is ClipLabeler
    r = ClipLabeler({"checkpoint": "x"}).resources
    assert 0 < r.num_gpus <= 1 and r.batch_size >= 1
    assert ClipLabeler({"checkpoint": "x", "num_gpus": 0}).resources.num_gpus == 0


def test_output_is_float16_global_then_patch_grid(lab):
    a, b = run(lab, data.astronaut(), data.coffee())  # 512×512 and 400×600 in one batch
    for arr in (a, b):
        assert arr.dtype == np.float16 and arr.shape == (1 + GRID * GRID, DIM)
        assert np.isfinite(arr).all()
    assert not np.allclose(a, b)


def test_rows_match_open_clip_global_embedding_and_patch_map(lab, clip_dir):
    """Row 0 is open_clip's encode_image; rows 1.. are the projected patch map, row-major."""
    import open_clip
    import torch

    img = data.chelsea()
    arr = run(lab, img)[0].astype(np.float32)
    ref = open_clip.create_model(f"local-dir:{clip_dir}")  # open_clip's own loader, independent of ours
    x, _ = images_to_batch([img], 64, lab.mean, lab.std)
    with torch.no_grad():
        glob = ref.encode_image(x)[0].numpy()
        inter = ref.visual.forward_intermediates(x, indices=1, normalize_intermediates=True,
                                                 output_fmt="NCHW")["image_intermediates"][-1]
        grid = (inter[0].permute(1, 2, 0) @ ref.visual.proj).numpy()  # (h, w, C)
    assert np.allclose(arr[0], glob, atol=2e-3, rtol=1e-2)
    assert np.allclose(arr[1:].reshape(GRID, GRID, DIM), grid, atol=2e-3, rtol=1e-2)


def test_center_crop_sees_only_the_centred_square(clip_dir, lab):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)  # centred square: columns 32..95
    outside = img.copy()
    outside[:, :32] = 0
    outside[:, 96:] = 255
    inside = img.copy()
    inside[10:20, 40:50] = 0
    base, out_changed, in_changed = run(lab, img, outside, inside)
    assert np.array_equal(base, out_changed)
    assert not np.array_equal(base, in_changed)
    stretch = ClipLabeler({"checkpoint": clip_dir, "fit": "resize"})
    s_base, s_out = run(stretch, img, outside)
    assert not np.array_equal(s_base, s_out)  # the whole image is seen


def test_batching_does_not_change_results(lab):
    imgs = [data.astronaut()[:300, :200], data.coffee(), data.rocket()]
    together = run(lab, *imgs)
    alone = [run(lab, im)[0] for im in imgs]
    for t, a in zip(together, alone):
        assert np.allclose(t.astype(np.float32), a.astype(np.float32), atol=1e-2)


def test_image_size_override_changes_the_grid(clip_dir):
    lab = ClipLabeler({"checkpoint": clip_dir, "image_size": 96})
    arr = run(lab, data.chelsea())[0]
    assert arr.shape == (1 + 6 * 6, DIM)
    assert lab.model_provenance()["grid"] == [6, 6]


def test_weights_file_and_directory_load_the_same_model(clip_dir, lab):
    by_file = ClipLabeler({"checkpoint": str(Path(clip_dir) / "open_clip_model.safetensors")})
    img = data.camera()[..., None].repeat(3, axis=2)
    assert np.array_equal(run(by_file, img)[0], run(lab, img)[0])


def test_provenance_records_random_weights_and_hash(lab, clip_dir):
    prov = lab.model_provenance()
    assert prov["random_weights"] is True
    assert prov["model_id"] == clip_dir
    assert prov["weights_sha256"] == weights_digest(Path(clip_dir) / "open_clip_model.safetensors")
    assert prov["libraries"]["open-clip-torch"] and prov["libraries"]["torch"]
    assert prov["embed_dim"] == DIM and prov["input_size"] == [64, 64]


def test_unmarked_weights_are_not_random(clip_dir, tmp_path):
    d = tmp_path / "real"
    shutil.copytree(clip_dir, d)
    os.remove(next(d.glob("prism4m_random_weights*")))
    assert ClipLabeler({"checkpoint": str(d)}).model_provenance()["random_weights"] is False


@pytest.mark.parametrize("checkpoint", [None, "/nonexistent/clip.safetensors"])
def test_missing_weights_names_the_config_key(checkpoint):
    with pytest.raises(MissingWeightsError, match=r"labelers\.clip\.checkpoint"):
        ClipLabeler({"checkpoint": checkpoint}).ensure_setup()


def test_uncached_pretrained_tag_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(MissingWeightsError, match=r"(?s)labelers\.clip\.checkpoint.*'openai'|'openai'.*labelers\.clip\.checkpoint"):
        ClipLabeler({"checkpoint": "openai", "cache_dir": str(tmp_path)}).ensure_setup()
    assert time.perf_counter() - t0 < 10


def test_directory_with_two_weight_files_is_refused(clip_dir, tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(Path(clip_dir) / "open_clip_model.safetensors", d / name)
    with pytest.raises(MissingWeightsError, match="2 weight files"):
        ClipLabeler({"checkpoint": str(d)}).ensure_setup()
