"""Cut one crop_settings row out of a raster or a feature map, as out of the rgb image.

A row is ``(top, left, h, w, hflip)`` in rgb/ pixel space (DATASET.md). The order is ml-4m's
(4M_FORMAT.md §1.4): crop → resize to the tokenizer's input size → optional horizontal flip.
Rasters go through PIL so rgb crops match ml-4m's (bicubic with PIL's antialiasing;
nearest for class maps; 16-bit depth as 32-bit float so no precision is lost). Feature maps
live on a coarser grid covering the same image, so the row is mapped to normalised image
coordinates and sampled bilinearly at the centres of the output grid's cells.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def crop_raster(arr: np.ndarray, row, size: int, resample: str = "bicubic", flip: str = "plain") -> np.ndarray:
    """H×W or H×W×C raster → (C, size, size) crop, same dtype (16-bit input comes back float32)."""
    top, left, h, w, hflip = (int(v) for v in row)
    channels = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[2])]
    out = []
    for ch in channels:
        img = Image.fromarray(ch.astype(np.float32), mode="F") if ch.dtype != np.uint8 else Image.fromarray(ch)
        # PIL pads outside the image with zeros, like torchvision's TF.crop
        img = img.crop((left, top, left + w, top + h)).resize((size, size), _RESAMPLE[resample])
        if hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(img))
    crop = np.stack(out)
    if hflip and flip == "normal_x":
        crop[0] = 255 - crop[0]  # a mirrored surface's normal points the other way in x
    return crop


def crop_feature_map(fmap: np.ndarray, row, region: tuple[int, int, int, int], grid: int) -> np.ndarray:
    """(h, w, C) feature map covering ``region`` (top, left, h, w) → (C, grid, grid) for the row."""
    import torch  # not at import: reading a root's labels must not load torch
    import torch.nn.functional as F

    top, left, h, w, hflip = (float(v) for v in row)
    r_top, r_left, H, W = (float(v) for v in region)
    top, left = top - r_top, left - r_left
    ys = top + (np.arange(grid) + 0.5) * h / grid
    xs = left + (np.arange(grid) + 0.5) * w / grid
    if hflip:
        xs = xs[::-1]
    # grid_sample's normalised coordinates (align_corners=False) are region fractions, so the
    # feature map's own resolution drops out.
    gy, gx = np.meshgrid(2 * ys / H - 1, 2 * xs / W - 1, indexing="ij")
    coords = torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))
    src = torch.from_numpy(np.ascontiguousarray(fmap.transpose(2, 0, 1))[None].astype(np.float32))
    return F.grid_sample(src, coords, mode="bilinear", padding_mode="border", align_corners=False)[0].numpy()
