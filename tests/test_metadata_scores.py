"""watermark_score and aesthetic_score: LAION's predictors from user-given weights.

Random weights, built with the predictors' own architectures (timm efficientnet_b3a with
LAION's classifier; LAION's aesthetic MLP), saved the way LAION ships them (torch state dicts)
and loaded back through the metadata labeler. The reference is each project's own inference
recipe (example_use.py, simple_inference.py) rebuilt here from its documented steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

import model_fixtures_sam_clip as fx
from prism4m.cli import app
from prism4m.contract.members import encode_npy
from prism4m.contract.store import DatasetStore
from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.labelers.metadata import MetadataLabeler
from prism4m.labelers.weights import RANDOM_WEIGHTS_MARKER

runner = CliRunner()


def laion_watermark_model():
    import timm

    torch.manual_seed(0)
    m = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    m.classifier = torch.nn.Sequential(torch.nn.Linear(1536, 625), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(625, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    # Random convolutions with fresh BatchNorm statistics give nearly the same features for every
    # image: calibrate the statistics on a few photos (one pass, cumulative average) so that the
    # score differs between images, as a trained detector's does.
    from PIL import Image

    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
            mod.reset_running_stats()
    photos = [data.rocket(), data.camera(), data.astronaut(), data.coffee(), data.chelsea()]
    x = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(p).convert("RGB").resize((256, 256)),
                                                 np.float32) / 255).permute(2, 0, 1) for p in photos])
    m.train()
    with torch.no_grad():
        m((x - 0.45) / 0.25)
    return m.eval()


def laion_aesthetic_mlp(width: int):
    torch.manual_seed(1)

    class MLP(torch.nn.Module):  # LAION's layout: a Sequential named `layers`, no activations
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return MLP().eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("scores")
    wm = laion_watermark_model()
    torch.save(wm.state_dict(), d / "watermark_model_v1.pt")
    head = laion_aesthetic_mlp(fx.TINY_CLIP_CONFIG["model_cfg"]["embed_dim"])  # the tiny clip labels' width
    torch.save(head.state_dict(), d / "aesthetic.pth")
    (d / RANDOM_WEIGHTS_MARKER).write_text("{}")
    return {"dir": d, "watermark": wm, "aesthetic": head}


def test_watermark_score_is_laions_probability(weights):
    from PIL import Image
    from torchvision import transforms as T

    lab = MetadataLabeler({"watermark_checkpoint": str(weights["dir"] / "watermark_model_v1.pt")})
    lab.ensure_setup()
    images = [data.astronaut(), data.coffee(), data.chelsea()]
    got = [json.loads(b)["watermark_score"] for b in lab.label_batch([LabelInput(f"k{i}", im)
                                                                      for i, im in enumerate(images)])]
    pre = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        ref = torch.softmax(weights["watermark"](torch.stack([pre(Image.fromarray(im)) for im in images])), 1)[:, 0]
    assert np.allclose(got, ref.numpy(), atol=1e-4), (got, ref)
    assert all(0 <= g <= 1 for g in got) and np.ptp(got) > 1e-2  # not a constant
    assert lab.model_provenance()["random_weights"] is True


def test_aesthetic_score_reads_the_clip_embedding_normalised(weights):
    head = weights["aesthetic"]
    width = head.layers[0].in_features
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(17, width)).astype(np.float16) * s for s in (1.0, 3.0)]
    lab = MetadataLabeler({"aesthetic_checkpoint": str(weights["dir"] / "aesthetic.pth")})
    assert "clip" in lab.optional_inputs
    lab.ensure_setup()
    batch = [LabelInput(f"k{i}", data.coffee(), {"clip": encode_npy(r)}) for i, r in enumerate(rows)]
    batch.append(LabelInput("no-clip", data.coffee()))  # clip invalid for this sample: field absent
    out = [json.loads(b) for b in lab.label_batch(batch)]
    # simple_inference.py: L2-normalise the embedding, then the MLP
    emb = np.stack([r[0].astype(np.float32) for r in rows])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    with torch.no_grad():
        ref = head(torch.from_numpy(emb))[:, 0].numpy()
    assert np.allclose([o["aesthetic_score"] for o in out[:2]], ref, atol=1e-5)
    assert abs(ref[0] - ref[1]) > 1e-4  # two different embeddings give two scores
    assert "aesthetic_score" not in out[2] and "brightness" in out[2]


def test_aesthetic_width_mismatch_names_both_widths(weights):
    lab = MetadataLabeler({"aesthetic_checkpoint": str(weights["dir"] / "aesthetic.pth")})
    lab.ensure_setup()
    width = weights["aesthetic"].layers[0].in_features
    member = encode_npy(np.zeros((5, width + 8), np.float16))
    with pytest.raises(ValueError, match=f"{width}-d.*{width + 8}-d"):
        lab.label_batch([LabelInput("k", data.coffee(), {"clip": member})])


def test_unconfigured_fields_leave_the_producer_unchanged_and_bad_weights_are_named(weights, tmp_path):
    plain = MetadataLabeler({})
    assert "watermark_checkpoint" not in plain.output_config() and "clip" not in plain.optional_inputs
    with pytest.raises(MissingWeightsError, match="watermark_checkpoint.*does not exist"):
        MetadataLabeler({"watermark_checkpoint": str(tmp_path / "nope.pt")}).output_config()
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(3)}, bad)
    lab = MetadataLabeler({"aesthetic_checkpoint": str(bad)})
    with pytest.raises(ValueError, match="bad.pt"):
        lab.ensure_setup()


def test_cli_metadata_with_both_scores(weights, tmp_path, ray_session):
    """A user journey: ingest, clip (tiny, random), metadata with both predictors; the record
    carries 21 fields' worth of what a caption-less photo root can have, flagged random."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(src / f"{name}.png")
    root = str(tmp_path / "ds")
    assert runner.invoke(app, ["ingest", str(src), root, "--short-side", "96", "-q"]).exit_code == 0
    clip_dir = fx.build_clip_tiny(tmp_path / "clip")
    res = runner.invoke(app, ["label", root, "-m", "clip,metadata", "-c", f"clip.checkpoint={clip_dir}",
                              "-c", f"metadata.watermark_checkpoint={weights['dir'] / 'watermark_model_v1.pt'}",
                              "-c", f"metadata.aesthetic_checkpoint={weights['dir'] / 'aesthetic.pth'}", "-q"])
    assert res.exit_code == 0, res.output
    store = DatasetStore(root)
    recs = [json.loads(m.data) for m in store.iter_shard("metadata", 0)]
    assert len(recs) == 3 and all({"watermark_score", "aesthetic_score", "colorfulness"} <= set(r) for r in recs)
    assert store.record("metadata", 0)["random_weights"] is True
    # unchanged weights: nothing to redo
    res = runner.invoke(app, ["label", root, "-m", "metadata",
                              "-c", f"metadata.watermark_checkpoint={weights['dir'] / 'watermark_model_v1.pt'}",
                              "-c", f"metadata.aesthetic_checkpoint={weights['dir'] / 'aesthetic.pth'}"])
    assert res.exit_code == 0 and "up to date: metadata=1" in res.output, res.output
