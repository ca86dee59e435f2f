"""Tiny random-weight ImageBind image towers, saved the way users' checkpoints are saved.

- `imagebind_state_dict`: a state dict with facebookresearch/ImageBind's own key names and
  shapes (read from imagebind/models/imagebind_model.py, multimodal_preprocessors.py and
  transformer.py: the vision preprocessor's cls token, learnable position embedding and
  Conv3d stem inside `rgbt_stem.proj` = Sequential(PadIm2Video, Conv3d); the vision trunk's
  `pre_transformer_layer.0` LayerNorm and `blocks.i` of nn.MultiheadAttention + norm_1/norm_2 +
  mlp.fc1/fc2; the head's LayerNorm `0` and bias-free Linear `2`), random tensors, plus a few
  keys of other modalities (ImageBind's file holds all six) that the conversion must ignore.
- `build_imagebind_tiny`: that state dict written with torch.save as `imagebind_tiny.pth`
  (what `imagebind_huge.pth` is) in a directory with the random-weights marker.
- `build_imagebind_open_clip_tiny`: an open_clip ViT at patch 14 in the `local-dir:` layout
  (`open_clip_config.json` with LayerNorm eps 1e-6, + `open_clip_model.safetensors`).

Seeds are fixed. Geometry: 56 px, patch 14 → a 4×4 grid, width 64, 2 blocks, 4 heads, 32-d
projection (ImageBind-H: 224 px, 16×16, 1280, 32 blocks, 16 heads, 1024).
"""

from __future__ import annotations

from pathlib import Path

import torch

from prism4m.labelers.weights import save_random_weights_marker

WIDTH, LAYERS, HEADS, PATCH, GRID, OUT = 64, 2, 4, 14, 4, 32
SIZE = GRID * PATCH
PRE, TRUNK, HEAD = "modality_preprocessors.vision.", "modality_trunks.vision.", "modality_heads.vision."


def imagebind_state_dict(seed: int = 0, width: int = WIDTH, layers: int = LAYERS, grid: int = GRID,
                         out: int = OUT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, around=0.0):
        return around + scale * torch.randn(*shape, generator=g)

    d = width
    sd = {
        PRE + "cls_token": r(1, 1, d, scale=0.5),
        PRE + "pos_embedding_helper.pos_embed": r(1, 1 + grid * grid, d, scale=0.5),
        PRE + "rgbt_stem.proj.1.weight": r(d, 3, 2, PATCH, PATCH, scale=0.05),
        TRUNK + "pre_transformer_layer.0.weight": r(d, around=1.0),
        TRUNK + "pre_transformer_layer.0.bias": r(d),
        HEAD + "0.weight": r(d, around=1.0),
        HEAD + "0.bias": r(d),
        HEAD + "2.weight": r(out, d),
    }
    for i in range(layers):
        b = f"{TRUNK}blocks.{i}."
        sd.update({
            b + "attn.in_proj_weight": r(3 * d, d, scale=0.2), b + "attn.in_proj_bias": r(3 * d),
            b + "attn.out_proj.weight": r(d, d), b + "attn.out_proj.bias": r(d),
            b + "norm_1.weight": r(d, around=1.0), b + "norm_1.bias": r(d),
            b + "norm_2.weight": r(d, around=1.0), b + "norm_2.bias": r(d),
            b + "mlp.fc1.weight": r(4 * d, d), b + "mlp.fc1.bias": r(4 * d),
            b + "mlp.fc2.weight": r(d, 4 * d), b + "mlp.fc2.bias": r(d),
        })
    # other modalities' tensors (ignored by the conversion)
    sd["modality_preprocessors.text.token_embedding.weight"] = r(16, 8)
    sd["modality_trunks.audio.blocks.0.attn.bias_k"] = r(1, 1, 8)
    sd["modality_heads.text.proj.0.weight"] = r(8)
    sd["modality_postprocessors.text.1.log_logit_scale"] = r(1)
    return sd


def build_imagebind_tiny(directory, seed: int = 0) -> str:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(imagebind_state_dict(seed), d / "imagebind_tiny.pth")
    save_random_weights_marker(d, note="tiny ImageBind vision tower, ImageBind's key names (56 px, patch 14)")
    return str(d)


TINY_OPEN_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": OUT,
        "vision_cfg": {"image_size": SIZE, "patch_size": PATCH, "width": WIDTH, "layers": LAYERS,
                       "head_width": WIDTH // HEADS, "norm_kwargs": {"eps": 1e-6}},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def build_imagebind_open_clip_tiny(directory) -> str:
    from model_fixtures_sam_clip import build_open_clip_tiny

    return build_open_clip_tiny(directory, TINY_OPEN_CLIP_CONFIG,
                                "tiny open_clip ViT (56 px, patch 14, LayerNorm eps 1e-6)")
