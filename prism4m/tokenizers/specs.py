"""What each tokenizable modality is: where it is stored, how it is decoded and normalised.

One table (``SPECS``) drives training and tokenizing alike, so a modality is read the same
way in both. Kinds:

- ``image``: an H×W(×C) raster at the rgb/ resolution (rgb jpg, depth 16-bit png, normal
  8-bit RGB png, canny/sam edges 8-bit L png); cropped, resized (PIL bicubic, as ml-4m),
  flipped (normals also invert x: ``255 - R``), normalised to roughly [-1, 1].
- ``classes``: a class-id png (semseg_coco: COCO panoptic ids 0..132, 255 = no class);
  resized with nearest; ml-4m's ``shift_idx_by_one`` makes 255 → 0 and c → c+1 (134 ids).
- ``feature``: float16 npy ``(1 + h*w, C)`` from the clip/dinov2 labelers, row 0 the global
  embedding, rows 1.. the patch map row-major over the region the labeler encoded (the
  centred square by default; the whole image for clip ``fit: resize``, read from the
  folder's ledger producer). ``h, w`` are the factorisation of ``h*w`` closest to that
  region's aspect ratio. The crop row (rgb pixels) is mapped into the region and the map
  resampled bilinearly to the token grid (crops.py).
- ``global``: row 0 of those files, one vector per sample (a crop cannot be applied to a
  global embedding; every crop row gets the same tokens).
- ``instances``: sam_instance JSON (one COCO RLE per instance at the rgb resolution); every
  instance that survives a crop becomes one 64×64 binary mask of its box (instances.py).
  Tokens are per instance, not per crop, and the member is JSON (instances.MaskTokenizer).
- ``pose``: human_poses JSON (COCO keypoints per person); one vector per person, the
  keypoints relative to its box (poses.py), the same for every crop row; the member is the
  record with each person's ``pose_tokenized`` (poses.PoseTokenizer).

Normalisation (recorded in the card): rgb/normal/edges ``x/127.5 - 1``; depth per crop by
truncated standardisation (mean/std of the values between the 10th and 90th percentile, as
ml-4m's DepthTransform); features and global vectors by per-channel mean/std measured on the
training data (stored with the weights); instance masks stay 0/1 (``binary``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from prism4m.contract.members import decode_npy


@dataclass(frozen=True)
class ModalitySpec:
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
        if self.kind == "global":
            return self.token_name
        # poses do not depend on the crop: no resolution, but an "@" so the label folder keeps its name
        return f"{self.token_name}@tok" if self.kind == "pose" else f"{self.token_name}@{input_size}"


SPECS: dict[str, ModalitySpec] = {s.name: s for s in [
    ModalitySpec("rgb", "rgb", "tok_rgb", "image", "jpg", 3, "mse", default_vocab=16384),
    ModalitySpec("depth", "depth", "tok_depth", "image", "png", 1, "smooth_l1", normalise="depth_truncated"),
    ModalitySpec("normal", "normal", "tok_normal", "image", "png", 3, "mse", flip="normal_x"),
    ModalitySpec("canny_edge", "canny_edge", "tok_canny_edge", "image", "png", 1, "smooth_l1"),
    ModalitySpec("sam_edge", "sam_edge", "tok_sam_edge", "image", "png", 1, "smooth_l1"),
    ModalitySpec("semseg_coco", "semseg_coco", "tok_semseg", "classes", "png", 1, "ce",
                 num_classes=134, normalise="none", default_vocab=4096),
    ModalitySpec("clip", "clip", "tok_clip", "feature", "npy", 0, "smooth_l1", normalise="standardize"),
    ModalitySpec("dinov2", "dinov2", "tok_dinov2", "feature", "npy", 0, "smooth_l1", patch_size=14,
                 normalise="standardize"),
    ModalitySpec("clip_global", "clip", "tok_clip_global", "global", "npy", 0, "cosine",
                 normalise="standardize"),
    ModalitySpec("dinov2_global", "dinov2", "tok_dinov2_global", "global", "npy", 0, "cosine",
                 normalise="standardize"),
    # ml-4m's name for the tokens is the label's (`sam_instance`); ours gets the crop side
    # (`sam_instance@224`) so the label folder keeps its name (DATASET.md)
    ModalitySpec("sam_instance", "sam_instance", "sam_instance", "instances", "json", 1, "bce",
                 normalise="binary", default_vocab=1024),
    ModalitySpec("human_poses", "human_poses", "human_poses", "pose", "json", 51, "smooth_l1",
                 normalise="standardize", default_vocab=1024, default_tokens=8),
]}


def get_spec(name: str) -> ModalitySpec:
    if name not in SPECS:
        raise KeyError(f"no tokenizer spec for modality {name!r}; known: {', '.join(sorted(SPECS))}")
    return SPECS[name]


def decode_value(spec: ModalitySpec, data: bytes) -> np.ndarray:
    """Member bytes → array: H×W×C uint8/uint16 rasters, H×W class ids, (N, C) float32 features;
    instances: an instances.InstanceLabel; pose: the human_poses record (dict)."""
    if spec.kind == "instances":
        from prism4m.tokenizers.instances import decode_label

        return decode_label(data)
    if spec.kind == "pose":
        from prism4m.tokenizers.poses import decode_label as decode_poses

        return decode_poses(data)
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


def normalise(spec: ModalitySpec, crops: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Crops as produced by crops.py (N, C, S, S) → float32 encoder input (classes: int64 ids)."""
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
