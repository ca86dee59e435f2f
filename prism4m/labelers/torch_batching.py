"""Turn a list of differently-sized H×W×3 uint8 images into one normalised model batch.

One idea: the pixel geometry between `rgb/` and a fixed-size vision model, made explicit so a
labeler can say exactly which rgb pixels each output cell saw.

    batch, boxes = images_to_batch(images, size=224, mean=MEAN, std=STD, fit="center_crop")

- `batch`: float tensor (B, 3, size_h, size_w) on `device` in `dtype`, ``(x/255 - mean) / std``.
- `boxes`: one `CropBox(top, left, height, width)` per image, in that image's own pixels: the
  region that was resized to fill the model input.

`fit` says how an image becomes `size`:
- ``"center_crop"``: the largest centred square (side ``m = min(H, W)``,
  ``top = (H - m) // 2``, ``left = (W - m) // 2``) is cut first, then resized. Cutting before
  resizing keeps the mapping exact: model pixel (y, x) covers rgb pixels
  ``top + y·m/size … top + (y+1)·m/size`` (likewise for x). This is crop_settings row 0.
- ``"resize"``: the whole image is stretched to `size` (aspect ratio not kept).

Resizing is bicubic with antialiasing on the float image (like PIL's BICUBIC when shrinking),
clamped back to [0, 255] before normalising. Works for any model fed normalised RGB (open_clip,
timm, transformers ViTs when bypassing their processor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from prism4m.contract.crop_settings import centre_square


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def crop_box(height: int, width: int, fit: Literal["center_crop", "resize"]) -> CropBox:
    """The region of an H×W image that `fit` maps onto the model input."""
    if fit == "resize":
        return CropBox(0, 0, height, width)
    if fit == "center_crop":
        return CropBox(*centre_square(height, width))  # crop_settings row 0, by construction
    raise ValueError(f"unknown fit {fit!r} (expected 'center_crop' or 'resize')")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def images_to_batch(
    images: Sequence[np.ndarray],
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    fit: Literal["center_crop", "resize"] = "center_crop",
    device: str = "cpu",
    dtype=None,
):
    """Crop/resize/normalise each H×W×3 uint8 image to `size`; see the module docstring."""
    import torch
    import torch.nn.functional as F

    out_h, out_w = _pair(size)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    tensors, boxes = [], []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 image, got {img.dtype} {img.shape}")
        box = crop_box(img.shape[0], img.shape[1], fit)
        patch = img[box.top:box.top + box.height, box.left:box.left + box.width]
        # Resize on the device (GPU when there is one): the uint8 crop is the only host copy.
        x = torch.from_numpy(np.ascontiguousarray(patch)).to(device).permute(2, 0, 1)[None].float()
        if (box.height, box.width) != (out_h, out_w):
            x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0, 255)[0] / 255.0
        tensors.append((x - mean_t) / std_t)
        boxes.append(box)
    batch = torch.stack(tensors) if tensors else torch.empty(0, 3, out_h, out_w, device=device)
    return (batch.to(dtype) if dtype is not None else batch), boxes
