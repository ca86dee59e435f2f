"""ImageBind image features (4M-21 `imagebind`, tokenized as `tok_imagebind@224` and
`tok_imagebind_global`) on open_clip's VisionTransformer.

ImageBind's image tower is an OpenCLIP ViT-H/14 (width 1280, 32 blocks, 16 heads, patch 14,
224 px, one CLS token, a LayerNorm before the blocks, pre-LN blocks with
``nn.MultiheadAttention`` and an exact-GELU MLP ×4). Its head
``modality_heads.vision`` is ``LayerNorm(1280, eps=1e-6) → SelectElement(index=0) →
Linear(1280 → 1024, bias=False)``, then the postprocessor L2-normalises. In open_clip's names
that is ``ln_post`` then ``x[:, 0] @ proj``, so the whole tower runs as an open_clip
``VisionTransformer`` — read from facebookresearch/ImageBind ``imagebind/models/
imagebind_model.py``, ``multimodal_preprocessors.py``, ``transformer.py`` (no code of it used).

Output member ``KEY.npy``: float16, ``allow_pickle=False``, shape ``(1 + h·w, C)`` with C the
trunk width (1280 for ImageBind-H), h = w = input size / 14 (16×16 at 224, 257 rows) — the
clip/dinov2 layout (``prism4m.modality.cropping.split_features``):

- row 0: the CLS token after the head's LayerNorm, i.e. exactly the vector ImageBind's head
  feeds to its 1280→1024 projection (``modality_heads.vision[0:2]`` of the trunk output);
- rows 1…h·w: the patch tokens after the same LayerNorm (a LayerNorm acts on each token
  alone, so this is the head's LayerNorm applied to the tokens its ``SelectElement`` drops),
  row-major: row ``1 + i·w + j`` is patch row i, column j; ``arr[1:].reshape(h, w, C)``.

Why 1280 and not the 1024-d embedding: 4M's ImageBind-H14 tokenizers take 1280-channel maps,
so 4M-21's features came from the trunk, before the projection. Whether before or after the
head's LayerNorm is not published; ``head_norm: false`` writes the raw trunk output instead
(no LayerNorm on any row; another producer, so another folder version). The projected,
normalised 1024-d ImageBind embedding is not stored.

Pixels: as ImageBind's ``load_and_transform_vision_data`` (bicubic resize of the short side
to 224, centre crop 224, OpenAI CLIP mean/std), via ``prism4m.labelers.torch_batching`` with
``fit: center_crop`` (crop first, then resize: the same square, crop_settings row 0).

Weights — ``checkpoint``:
- ImageBind's own ``imagebind_huge.pth`` (or a ``.safetensors`` of its state dict): only the
  keys ``modality_preprocessors.vision.*``, ``modality_trunks.vision.*`` and
  ``modality_heads.vision.*`` are read and renamed to open_clip's (`imagebind_to_open_clip`);
  the ``Conv3d`` stem, kernel (2, 14, 14) over the image repeated as 2 frames, becomes
  open_clip's ``Conv2d`` with the kernel's two time slices summed (the same linear map on a
  2-frame repeat). The number of heads is not in the weights: ``num_heads`` (16).
- an open_clip-format ViT-H-14 (file, directory, tag or hub id, as the clip labeler takes).
Every LayerNorm gets ``layer_norm_eps`` (ImageBind's 1e-6; open_clip's own default is 1e-5).
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from pydantic import Field

from prism4m.errors import UserError
from prism4m.labelers.base import Resources
from prism4m.labelers.clip import ClipConfig, OpenClipVisionLabeler

EXAMPLE_CHECKPOINT = "/models/imagebind/imagebind_huge.pth"
PRE, TRUNK, HEAD = "modality_preprocessors.vision.", "modality_trunks.vision.", "modality_heads.vision."
IMAGEBIND_FRAMES = 2  # PadIm2Video(ntimes=2, pad_type="repeat") in front of the Conv3d stem
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # ImageBind's data.py normalisation
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_BLOCK_KEYS = {  # ImageBind BlockWithMasking → open_clip ResidualAttentionBlock
    "attn.in_proj_weight": "attn.in_proj_weight", "attn.in_proj_bias": "attn.in_proj_bias",
    "attn.out_proj.weight": "attn.out_proj.weight", "attn.out_proj.bias": "attn.out_proj.bias",
    "norm_1.weight": "ln_1.weight", "norm_1.bias": "ln_1.bias",
    "norm_2.weight": "ln_2.weight", "norm_2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


class ImagebindConfig(ClipConfig):
    model_name: str = Field("ViT-H-14", description="open_clip architecture of an open_clip-format checkpoint "
                                                    "(ignored for ImageBind's own weights and when the "
                                                    "directory has open_clip_config.json)")
    num_heads: int = Field(16, ge=1, description="attention heads of an ImageBind-format checkpoint (not in "
                                                 "the weights; imagebind_huge: 16)")
    layer_norm_eps: float = Field(1e-6, gt=0, description="eps of every LayerNorm (ImageBind: 1e-6; "
                                                          "open_clip's ViT-H-14: 1e-5)")
    head_norm: bool = Field(True, description="apply the vision head's LayerNorm (open_clip ln_post) to every "
                                              "row; false: the raw trunk output")


def is_imagebind_state_dict(keys) -> bool:
    return any(k.startswith(TRUNK) for k in keys)


def imagebind_to_open_clip(state: dict, source: str = "state dict") -> dict:
    """ImageBind's vision keys → the state dict of an open_clip ``VisionTransformer`` (no
    ``visual.`` prefix). Other modalities' keys are ignored; an unknown vision key is an error
    (it would mean an architecture this conversion does not describe)."""
    import torch

    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith(PRE):
            name = key[len(PRE):]
            if name == "cls_token":  # (1, 1, D)
                out["class_embedding"] = value.reshape(-1)
            elif name == "pos_embedding_helper.pos_embed":  # (1, 1 + N, D)
                out["positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
            elif name == "rgbt_stem.proj.1.weight":  # Conv3d (D, 3, T, p, p)
                if value.ndim != 5 or value.shape[2] != IMAGEBIND_FRAMES:
                    raise UserError(f"{source}: {key} has shape {tuple(value.shape)}; expected a Conv3d kernel "
                                    f"(D, 3, {IMAGEBIND_FRAMES}, p, p)")
                # Conv3d over [x, x] in time with stride T == T: one output frame, the sum of
                # both slices' 2-D convolutions of x == a Conv2d with the summed kernel.
                out["conv1.weight"] = value.float().sum(dim=2).to(value.dtype)
            else:
                unknown.append(key)
        elif key.startswith(TRUNK):
            name = key[len(TRUNK):]
            m = _BLOCK.fullmatch(name)
            if name in ("pre_transformer_layer.0.weight", "pre_transformer_layer.0.bias"):
                out["ln_pre." + name.rsplit(".", 1)[1]] = value
            elif m and m.group(2) in _BLOCK_KEYS:
                out[f"transformer.resblocks.{m.group(1)}.{_BLOCK_KEYS[m.group(2)]}"] = value
            else:
                unknown.append(key)
        elif key.startswith(HEAD):
            name = key[len(HEAD):]
            if name in ("0.weight", "0.bias"):
                out["ln_post." + name.split(".")[1]] = value
            elif name == "2.weight":  # Linear(D → E, bias=False): x @ W.T
                out["proj"] = value.t().contiguous()
            else:
                unknown.append(key)
    if unknown:
        raise UserError(f"{source}: ImageBind vision key(s) this conversion does not know: "
                        f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}")
    needed = ("class_embedding", "positional_embedding", "conv1.weight", "ln_pre.weight", "ln_post.weight", "proj",
              "transformer.resblocks.0.attn.in_proj_weight")
    missing = [k for k in needed if k not in out]
    if missing:
        raise UserError(f"{source}: not a complete ImageBind vision tower (no {', '.join(missing)} after "
                        f"conversion)")
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in out.items()}


def load_vision_state(weights: Path) -> dict | None:
    """The ImageBind vision tensors of ``weights``, or None when the file is not in ImageBind's
    layout (then it is read as an open_clip checkpoint). Only vision tensors are materialised:
    safetensors are opened lazily and .pth files memory-mapped."""
    try:
        return _load_vision_state(weights)
    except (OSError, UserError):
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt/pickled-code files: the user's to fix
        raise UserError(f"{weights}: not a readable weights file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def _load_vision_state(weights: Path) -> dict | None:
    prefixes = (PRE, TRUNK, HEAD)
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if not is_imagebind_state_dict(keys):
                return None
            return {k: f.get_tensor(k) for k in keys if k.startswith(prefixes)}
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (legacy torch.save format): no mmap
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not is_imagebind_state_dict(state):
        return None
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def build_visual(state: dict, num_heads: int, eps: float, image_size: int | None = None, source: str = "weights"):
    """An open_clip VisionTransformer with the geometry of an open_clip-named ImageBind state
    dict (width, depth, patch, grid, MLP ratio and output width read from the tensors), the
    weights loaded strictly; the position embedding resized (open_clip's bicubic) when
    ``image_size`` differs from the checkpoint's."""
    import torch
    from open_clip.model import resize_pos_embed
    from open_clip.transformer import LayerNorm, VisionTransformer

    width = state["class_embedding"].shape[0]
    patch = state["conv1.weight"].shape[-1]
    grid = math.isqrt(state["positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != state["positional_embedding"].shape[0]:
        raise UserError(f"{source}: position embedding of {state['positional_embedding'].shape[0]} rows is not "
                        f"1 + a square grid")
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    if width % num_heads:
        raise UserError(f"imagebind.num_heads {num_heads} does not divide the checkpoint's width {width} ({source})")
    visual = VisionTransformer(
        image_size=image_size or grid * patch, patch_size=patch, width=width, layers=layers, heads=num_heads,
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        output_dim=state["proj"].shape[1], act_layer=torch.nn.GELU, norm_layer=partial(LayerNorm, eps=eps))
    wrapped = {"visual.positional_embedding": state["positional_embedding"]}
    resize_pos_embed(wrapped, SimpleNamespace(visual=visual))
    visual.load_state_dict({**state, "positional_embedding": wrapped["visual.positional_embedding"]}, strict=True)
    visual.image_mean, visual.image_std = OPENAI_MEAN, OPENAI_STD
    return visual


def set_layer_norm_eps(module, eps: float) -> None:
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps


class ImagebindLabeler(OpenClipVisionLabeler):
    name = "imagebind"
    Config = ImagebindConfig
    example_checkpoint = EXAMPLE_CHECKPOINT
    # ViT-H/14 at 224 is ~160 GFLOPs per image (~10× ViT-B/16): most of a GPU share.
    default_resources = Resources(num_cpus=1, num_gpus=0.5, batch_size=32)

    def setup(self) -> None:
        cfg = self.config
        weights = self._weights()
        state = load_vision_state(weights)
        if state is None:
            visual, arch = self._open_clip_visual(weights)
            arch["weights_format"] = "open_clip"
        else:
            visual = build_visual(imagebind_to_open_clip(state, str(weights)), cfg.num_heads, cfg.layer_norm_eps,
                                  cfg.image_size, str(weights))
            arch = {"weights_format": "imagebind", "num_heads": cfg.num_heads}
            del state
        set_layer_norm_eps(visual, cfg.layer_norm_eps)
        arch.update(width=int(visual.transformer.width), layers=len(visual.transformer.resblocks),
                    layer_norm_eps=cfg.layer_norm_eps, head_norm=cfg.head_norm,
                    rows="head LayerNorm of [CLS, patches]" if cfg.head_norm else "trunk output [CLS, patches]")
        if not cfg.head_norm:
            import torch

            visual.ln_post = torch.nn.Identity()
        visual.proj = None  # rows are trunk-width tokens; the 1024-d projection is not stored
        visual.final_ln_after_pool = False  # ln_post (or nothing) on every token, CLS included
        self._install(visual, arch)

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, 1 + h·w, C) float32: CLS then patch tokens, C the trunk width."""
        import torch

        self.ensure_setup()
        x = self._batch(images)
        with torch.inference_mode():
            cls, tokens = self.visual(x)  # proj is None: cls = ln_post(x)[:, 0], tokens = ln_post(x)[:, 1:]
            out = torch.cat([cls[:, None], tokens], dim=1)
        return out.float().cpu().numpy()
