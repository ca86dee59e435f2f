"""Tiny random-weight SAM and open_clip models, saved the way users' checkpoints are saved.

- SAM: the `tiny` architecture of prism4m.labelers.sam (segment-anything's own classes at
  256 px), its state dict written with torch.save as a `.pth` — what the SAM release ships.
- CLIP: an open_clip ViT from a small `open_clip_config.json` plus `open_clip_model.safetensors`,
  the layout of open_clip's `local-dir:` / hub checkpoints.

Both directories carry the random-weights marker. Seeds are fixed, so a builder writes the same
weights every time. Signature: `build_<x>(directory) -> directory`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prism4m.labelers.weights import save_random_weights_marker

# Patch 16 at 64 px: a 4×4 token grid, 32-d embeddings (ViT-B/16 is 14×14 and 512-d).
TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
                       "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def build_sam_tiny(directory) -> str:
    from prism4m.labelers.sam import build_sam

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_sam("tiny").state_dict(), d / "sam_tiny.pth")
    save_random_weights_marker(d, note="tiny SAM (segment_anything.modeling, 256 px)")
    return str(d)


def build_open_clip_tiny(directory, config: dict, note: str) -> str:
    """A random-weight open_clip model of ``config`` in open_clip's local-dir layout (config +
    safetensors), marked as random weights."""
    import open_clip
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{d}", pretrained=None, load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    save_random_weights_marker(d, note=note)
    return str(d)


def build_clip_tiny(directory) -> str:
    return build_open_clip_tiny(directory, TINY_CLIP_CONFIG, "tiny open_clip ViT (64 px, patch 16)")
