"""How each tokenizable modality becomes encoder input: decoded, normalised (``SPECS``).

``SPECS`` is built from the contract's modality table (folder, extension, token kind and
name, vocabulary, tokens, patch size) plus what a tokenizer of each trains with (channels,
loss, flip, normalisation), so training and tokenizing read a modality the same way. Kinds:
``image`` (rasters at the rgb/ resolution), ``classes`` (semseg_coco ids, ml-4m's
``shift_idx_by_one``), ``feature`` (clip/dinov2 ``(1 + h*w, C)`` maps, row 0 global),
``global`` (row 0 of those), ``instances`` (sam_instance RLEs, instances.py), ``pose``
(human_poses keypoints, poses.py).

Normalisation (recorded in the card): rgb/normal/edges ``x/127.5 - 1``; depth per crop by
truncated standardisation (mean/std of the values between the 10th and 90th percentile, as
ml-4m's DepthTransform); features, global vectors and poses by per-channel mean/std of the
training data (stored with the weights); instance masks stay 0/1 (``binary``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from prism4m.contract.members import decode_npy
from prism4m.contract.modalities import MODALITIES, Modality
from prism4m.modality import instances, poses


@dataclass(frozen=True)
class TokenSpec:
    name: str              # the spec's name, as the card's ``modality``
    folder: str            # source folder in the dataset root
    token_name: str        # ml-4m modality name of the tokens (folder gets ``@res`` for grids)
    kind: str              # image | classes | feature | global | instances | pose
    ext: str               # member extension in the source folder
    channels: int          # input channels (0: read from the data)
    loss: str              # mse | smooth_l1 | ce | cosine | bce
    patch_size: int = 16   # rgb pixels per token side
    num_classes: int = 0
    flip: str = "plain"    # plain | normal_x
    normalise: str = "unit"  # unit | depth_truncated | standardize | binary
    default_vocab: int = 8192
    default_tokens: int = 16  # tokens per vector (MLP tokenizers)

    @property
    def resample(self) -> str:
        return {"classes": "nearest", "instances": "bilinear"}.get(self.kind, "bicubic")

    @property
    def in_sequence(self) -> bool:
        """Tokens that end up inside a text sequence (per instance / person, not per crop)."""
        return self.kind in ("instances", "pose")

    def token_folder(self, input_size: int) -> str:
        return MODALITIES[self.name].token_folder(input_size)


#: What a tokenizer of each modality trains with; the rest of its spec is the modality table's.
#: Tokens inside a text sequence (sam_instance, human_poses) have their own codebook (ml-4m's
#: sam_mask and pose tokenizers: 1024 codes; 8 ids per person): the table's vocabulary and
#: token count are the sequence's.
_TRAINING: dict[str, dict] = {
    "rgb": {"channels": 3, "loss": "mse"},
    "depth": {"channels": 1, "loss": "smooth_l1", "normalise": "depth_truncated"},
    "normal": {"channels": 3, "loss": "mse", "flip": "normal_x"},
    "canny_edge": {"channels": 1, "loss": "smooth_l1"},
    "sam_edge": {"channels": 1, "loss": "smooth_l1"},
    "semseg_coco": {"channels": 1, "loss": "ce", "num_classes": 134, "normalise": "none"},
    "clip": {"channels": 0, "loss": "smooth_l1", "normalise": "standardize"},
    "dinov2": {"channels": 0, "loss": "smooth_l1", "normalise": "standardize"},
    "imagebind": {"channels": 0, "loss": "smooth_l1", "normalise": "standardize"},
    "clip_global": {"channels": 0, "loss": "cosine", "normalise": "standardize"},
    "dinov2_global": {"channels": 0, "loss": "cosine", "normalise": "standardize"},
    "imagebind_global": {"channels": 0, "loss": "cosine", "normalise": "standardize"},
    "sam_instance": {"channels": 1, "loss": "bce", "normalise": "binary", "default_vocab": 1024},
    "human_poses": {"channels": poses.POSE_CHANNELS, "loss": "smooth_l1", "normalise": "standardize",
                    "default_vocab": 1024, "default_tokens": 8},
}


def _spec(m: Modality, training: dict) -> TokenSpec:
    table = {"default_vocab": m.vocab, "default_tokens": m.tokens or 16} if not m.sequence else {}
    return TokenSpec(name=m.name, folder=m.label_folder, token_name=m.token_name, kind=m.token_kind, ext=m.ext,
                     patch_size=m.patch_size, **table, **training)


SPECS: dict[str, TokenSpec] = {name: _spec(MODALITIES[name], training) for name, training in _TRAINING.items()}


def get_spec(name: str) -> TokenSpec:
    if name not in SPECS:
        raise KeyError(f"no tokenizer spec for modality {name!r}; known: {', '.join(sorted(SPECS))}")
    return SPECS[name]


def decode_value(spec: TokenSpec, data: bytes) -> np.ndarray:
    """Member bytes → array: H×W×C uint8/uint16 rasters, H×W class ids, (N, C) float32 features;
    instances: an instances.InstanceLabel; pose: the human_poses record (dict)."""
    if spec.kind == "instances":
        return instances.decode_label(data)
    if spec.kind == "pose":
        return poses.decode_label(data)
    if spec.ext == "npy":
        arr = decode_npy(data)
        if arr.ndim != 2:
            raise ValueError(f"{spec.folder}: expected a (1 + h*w, C) feature array, got shape {arr.shape}")
        return arr.astype(np.float32)
    img = Image.open(io.BytesIO(data))
    if spec.name == "rgb" or spec.flip == "normal_x":
        img = img.convert("RGB")
    elif spec.kind == "image" and img.mode not in ("I;16", "I", "F", "L"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.dtype == np.int32:  # PIL "I" for 16-bit pngs on some versions
        arr = arr.astype(np.uint16)
    return arr


def feature_grid(n_patches: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with h*w == n_patches and h/w closest to the image's aspect ratio."""
    aspect = image_hw[0] / image_hw[1]
    best = None
    for h in range(1, int(math.isqrt(n_patches)) + 1):
        if n_patches % h:
            continue
        for hh, ww in ((h, n_patches // h), (n_patches // h, h)):
            err = abs(math.log(hh / ww) - math.log(aspect))
            if best is None or err < best[0]:
                best = (err, hh, ww)
    return best[1], best[2]


def shift_classes(ids: np.ndarray) -> np.ndarray:
    """ml-4m's shift_idx_by_one: c → c+1 in uint8, so 255 (no class) → 0."""
    return (ids.astype(np.uint8) + np.uint8(1)).astype(np.int64)


def normalise(spec: TokenSpec, crops: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Crops as produced by cropping.py (N, C, S, S) → float32 encoder input (classes: int64 ids)."""
    if spec.kind == "classes":
        return shift_classes(crops[:, 0] if crops.ndim == 4 else crops)
    x = crops.astype(np.float32)
    if spec.normalise == "binary":
        return x
    if spec.normalise == "unit":
        return x / 127.5 - 1.0
    if spec.normalise == "depth_truncated":
        flat = x.reshape(len(x), -1)
        lo, hi = np.percentile(flat, [10, 90], axis=1)
        out = np.empty_like(x)
        for i in range(len(x)):
            inner = flat[i][(flat[i] >= lo[i]) & (flat[i] <= hi[i])]
            mean, std = (inner.mean(), inner.std()) if inner.size else (0.0, 1.0)
            out[i] = (x[i] - mean) / max(float(std), 1e-6)
        return out
    if spec.normalise == "standardize":
        if stats is None:
            raise ValueError(f"{spec.name}: standardisation needs the training statistics")
        mean, std = stats
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        return (x - mean.reshape(shape)) / std.reshape(shape)
    raise ValueError(f"unknown normalisation {spec.normalise!r}")


def denormalise_unit(x: np.ndarray) -> np.ndarray:
    """Encoder space of ``unit`` modalities back to 0..255 floats (for PSNR)."""
    return (np.clip(x, -1, 1) + 1.0) * 127.5
