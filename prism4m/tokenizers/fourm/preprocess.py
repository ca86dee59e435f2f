"""ml-4m's inputs for its published tokenizers, exactly: one sample's label + crop rows → tensor.

``save_vq_tokens.py`` turns every crop row ``(top, left, h, w, hflip)`` into an encoder input
with ``MODALITY_TRANSFORMS_DIVAE[task]`` (``fourm/data/modality_info.py``):
``preprocess`` on the whole label, then ``image_augment`` (``TF.crop`` → PIL
``img.resize((S, S), resample)`` → ``TF.hflip`` if the row says so) and ``postprocess``
(``fourm/data/modality_transforms.py``). Facts per modality, all from those two files unless
marked:

- rgb: ``RGBTransform(imagenet_default_mean_and_std=False)``: ``convert('RGB')``, crop,
  resize with ``resample=None`` (``--resample_mode`` default), flip, ``to_tensor`` (÷255),
  ``normalize(mean=0.5, std=0.5)`` → [-1, 1] (IMAGENET_INCEPTION_MEAN/STD; ml-4m issue #22).
- depth: ``DepthTransform(standardize_depth=True)``: the label image as loaded (a 16-bit PNG
  opens as mode ``I;16``), crop, resize with ``resample=None``, flip, ``np.array`` ÷ 65535,
  then truncated standardisation over the crop: sort the values, keep
  ``[int(0.1·n) : int(0.9·n)]``, subtract their mean, divide by ``sqrt(var + 1e-6)``
  (unbiased variance). ``resample=None`` means BICUBIC for ``I;16`` with Pillow ≥ 11 and
  NEAREST with Pillow ≤ 10.4 (``PIL/Image.py::Image.resize`` of those releases); ml-4m's
  released depth tokens were made in the Pillow 10 era [inferred], so ``depth_resample``
  lets a user pick either (default: this installation's Pillow rule, i.e. what ml-4m's code
  does here).
- normal: ``NormalTransform(standardize_surface_normals=False)`` after ``convert('RGB')``
  (``save_vq_tokens.py`` converts rgb and normal): crop, resize (``None`` → BICUBIC for RGB),
  flip **and** ``R ← 255 − R`` (``NormalTransform.image_hflip``), ``to_tensor``,
  ``normalize(0.5, 0.5)`` → [-1, 1].
- semseg_coco: ``SemsegTransform(shift_idx_by_one=True)``: ``convert('P')`` (identity on our
  8-bit class ids), ``+ 1`` in uint8 (so 255 "no class" → 0 and class k → k+1), crop,
  resize NEAREST (forced), flip, ``pil_to_tensor`` → int64 ``(S, S)``; the tokenizer embeds
  ids with ``cls_emb`` (``VQ.prepare_input``; ml-4m issue #24).
- canny_edge / sam_edge: ``RGBTransform(imagenet_default_mean_and_std=False)`` on the 8-bit
  edge image: three equal channels in [-1, 1]. The published edge tokenizer's channel count
  is whatever its ``encoder.proj`` says (``MODALITY_INFO['canny_edge']['num_channels']`` is
  1); with 1 channel the first is used [inferred: ml-4m ships no edge-tokenizing code].
- CLIP-B16 / DINOv2-B14 / ImageBind-H14: the feature map ``(B, C, h, w)`` made from the
  extractor's patch tokens ``(B, h·w, C)`` by ``rearrange('b (nh nw) d -> b d nh nw')`` (a
  permuted view, which we keep); global variants: the ``(B, C)`` CLS embedding as
  ``(B, C, 1, 1)`` (``save_vq_tokens.py``, ``run_training_vqvae.py::prepare_inputs``).

- sam_mask (SAM instances): one instance per encoder row, ``(N, 1, 64, 64)`` float32 holding
  exactly 0.0 and 1.0: ``SAMInstanceTransform.get_binary_masks`` (``modality_transforms.py``)
  fills the instance's polygon with 255 in a uint8 mask and stores ``mask / 255.0``,
  ``postprocess`` casts it to float32 and ``run_training_vqvae.py::prepare_inputs`` flattens
  the instances to ``(N, 1, S, S)`` (``n_channels`` 1, ``MODALITY_INFO['sam_mask']``; no
  resize, no normalisation). How each instance is cut to its 64×64 mask is prism4m's
  ``modality.instances.crop_instances`` (ml-4m did not release its SAM-instance token
  extraction; the adapter and DATASET.md say what is inferred).

Crops outside the image are padded with 0 by ``TF.crop``/PIL, as here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image

Resample = Literal["pil_default", "bicubic", "nearest", "bilinear"]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST,
             "bilinear": Image.Resampling.BILINEAR}


def _rows(rows) -> list[tuple[int, int, int, int, int]]:
    arr = np.asarray(rows).reshape(-1, 5)
    return [tuple(int(v) for v in r) for r in arr]


def _pil_resample(mode: Resample):
    """``resample=None`` as ml-4m passes it, or an explicit filter."""
    return None if mode == "pil_default" else _RESAMPLE[mode]


def crop_resize_flip(img: Image.Image, row, size: int, resample=None) -> Image.Image:
    """``TF.crop(img, top, left, h, w)`` → ``img.resize((size, size), resample)`` → optional hflip."""
    top, left, h, w, flip = (int(v) for v in row)
    out = img.crop((left, top, left + w, top + h)).resize((size, size), resample=resample)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def _to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """``torchvision.transforms.functional.to_tensor`` for 8-bit images: (C, H, W) float32 in [0, 1]."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def _normalize_half(t: torch.Tensor) -> torch.Tensor:
    """``TF.normalize(t, mean=0.5, std=0.5)`` per channel: (t − 0.5) / 0.5, as torchvision computes it."""
    c = t.shape[0]
    mean = torch.as_tensor((0.5,) * c, dtype=t.dtype).view(-1, 1, 1)
    std = torch.as_tensor((0.5,) * c, dtype=t.dtype).view(-1, 1, 1)
    return t.clone().sub_(mean).div_(std)


def _as_pil(value, mode: str | None = None) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    arr = np.asarray(value)
    return Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)


def rgb_inputs(image, rows, size: int) -> torch.Tensor:
    """RGB image (H, W, 3) uint8 or PIL → (n_crops, 3, S, S) float32 in [-1, 1]."""
    img = _as_pil(image).convert("RGB")
    return torch.stack([_normalize_half(_to_unit_tensor(crop_resize_flip(img, r, size))) for r in _rows(rows)])


def edge_inputs(edges, rows, size: int, n_channels: int = 1) -> torch.Tensor:
    """8-bit edge image (H, W) (255 = edge) → (n_crops, n_channels, S, S) in [-1, 1]."""
    x = rgb_inputs(_as_pil(edges).convert("RGB"), rows, size)
    if n_channels == 3:
        return x
    if n_channels == 1:
        return x[:, :1]
    raise ValueError(f"an edge tokenizer with {n_channels} input channels is not supported (1 or 3)")


def normal_inputs(normals, rows, size: int) -> torch.Tensor:
    """8-bit normal image (H, W, 3), channel = (n + 1) / 2 · 255 → (n_crops, 3, S, S) in [-1, 1]."""
    img = _as_pil(normals).convert("RGB")
    out = []
    for r in _rows(rows):
        top, left, h, w, flip = r
        crop = crop_resize_flip(img, (top, left, h, w, 0), size)
        if flip:
            arr = np.array(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
            arr[:, :, 0] = 255 - arr[:, :, 0]
            crop = Image.fromarray(arr)
        out.append(_normalize_half(_to_unit_tensor(crop)))
    return torch.stack(out)


def _truncated_standardise(depth: torch.Tensor, thresh: float = 0.1) -> torch.Tensor:
    flat = torch.sort(depth.reshape(-1), dim=0)[0]
    kept = flat[int(thresh * flat.shape[0]): int((1 - thresh) * flat.shape[0])]
    return (depth - kept.mean()) / torch.sqrt(kept.var() + 1e-6)


def depth_inputs(depth, rows, size: int, resample: Resample = "pil_default") -> torch.Tensor:
    """16-bit depth (H, W) uint16 (or a PIL ``I;16`` image) → (n_crops, 1, S, S) float32,
    each crop standardised on its own (truncated at 10 % / 90 %)."""
    if isinstance(depth, Image.Image):
        img = depth
    else:
        arr = np.asarray(depth)
        if arr.dtype != np.uint16:
            raise ValueError(f"depth must be 16-bit (uint16), got {arr.dtype}")
        img = Image.fromarray(arr)  # mode I;16, as a 16-bit PNG opens
    out = []
    for r in _rows(rows):
        crop = np.array(crop_resize_flip(img, r, size, _pil_resample(resample)))
        t = torch.Tensor(crop / (2 ** 16 - 1.0)).unsqueeze(0)
        out.append(_truncated_standardise(t))
    return torch.stack(out)


def semseg_inputs(class_ids, rows, size: int) -> torch.Tensor:
    """8-bit class ids (H, W) (255 = no class) → (n_crops, S, S) int64 shifted by one (255 → 0)."""
    arr = np.asarray(class_ids)
    if isinstance(class_ids, Image.Image):
        arr = np.asarray(class_ids.convert("P"))
    if arr.dtype != np.uint8:
        raise ValueError(f"semseg class ids must be 8-bit (uint8), got {arr.dtype}")
    img = Image.fromarray(arr + np.uint8(1))  # uint8 wrap-around: 255 → 0
    return torch.stack([
        torch.from_numpy(np.array(crop_resize_flip(img, r, size, Image.Resampling.NEAREST), dtype=np.uint8))
        .to(torch.long) for r in _rows(rows)])


def feature_map_inputs(tokens, grid: int | tuple[int, int]) -> torch.Tensor:
    """Patch tokens (h·w, C) or (B, h·w, C), row-major → (B, C, h, w) as save_vq_tokens.py hands them over."""
    t = torch.as_tensor(np.asarray(tokens)).to(torch.float32)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    b, n, c = t.shape
    if n != gh * gw:
        raise ValueError(f"{n} feature tokens do not make a {gh}×{gw} grid")
    return t.reshape(b, gh, gw, c).permute(0, 3, 1, 2)


def feature_global_inputs(vectors) -> torch.Tensor:
    """Global embeddings (C,) or (B, C) → (B, C, 1, 1)."""
    t = torch.as_tensor(np.asarray(vectors)).to(torch.float32)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    return t.unsqueeze(2).unsqueeze(2)


def sam_mask_inputs(masks, mask_size: int = 64) -> torch.Tensor:
    """Instance masks (N, 1, S, S) or (N, S, S), 0/1 → (N, 1, S, S) float32 of 0.0 / 1.0
    (``mask / 255.0`` of ml-4m's 0/255 uint8 masks, cast to float32)."""
    arr = np.asarray(masks)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2:] != (mask_size, mask_size):
        raise ValueError(f"SAM instance masks must be (N, 1, {mask_size}, {mask_size}), got {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("SAM instance masks must hold only 0 and 1")
    return torch.from_numpy((arr.astype(np.uint8) * np.uint8(255)) / 255.0).to(torch.float32)
