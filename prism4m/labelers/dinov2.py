"""DINOv2 features (4M-21 `tok_dinov2` / `tok_dinov2_global` source) from transformers' Dinov2Model.

Input pixels: the centred square of side min(H, W) of the rgb/ image — the same pixels as
crop_settings row 0 (top = (H-s)//2, left = (W-s)//2) — resized (bicubic) to `input_size`,
then rescaled and normalised with the checkpoint's image processor (ImageNet mean/std for
facebook/dinov2-*); the processor's own resize/centre-crop are switched off.

Output: float16 npy (allow_pickle=False), shape (1 + h*w, C) with h = w = input_size / patch
(224 / 14 → 16×16 → 257 rows, C = 768 for dinov2-base). Row 0 is the CLS token and rows 1..
the patch tokens in row-major order (row 1 + i*w + j is patch (i, j)), all taken from
`last_hidden_state`, i.e. after the final LayerNorm (DINOv2's `x_norm_clstoken` /
`x_norm_patchtokens`); `arr[1:].reshape(h, w, C)` is the feature map, and patch (i, j) covers
rgb rows `top + i*s/h … top + (i+1)*s/h` and the matching columns. Same layout as the clip
labeler. 4M's `tok_dinov2@224` tokenizer reads the patch map, `tok_dinov2_global` the CLS row.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from prism4m.labelers.base import LabelInput, Resources
from prism4m.contract.members import encode_npy
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig
from prism4m.contract.crop_settings import centre_square


PATCH = 14  # every facebook/dinov2-* checkpoint; setup() checks the loaded one's too


class Dinov2Config(HFLabelerConfig):
    input_size: int = Field(224, ge=PATCH, description=f"side of the square fed to the model (a multiple of "
                                                       f"the patch size, {PATCH})")

    @field_validator("input_size")
    @classmethod
    def _whole_patches(cls, v: int) -> int:
        # Refused before any actor starts: a partial patch would be silently cropped by the model.
        if v % PATCH:
            lo = max(PATCH, v // PATCH * PATCH)
            raise ValueError(f"must be a multiple of DINOv2's patch size {PATCH}, e.g. {lo} or {lo + PATCH}")
        return v


def resized_centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centred square of side min(H, W) (crop_settings row 0), bicubic-resized to size×size."""
    top, left, s, _ = centre_square(*image.shape[:2])
    crop = Image.fromarray(image[top:top + s, left:left + s])
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


class Dinov2Labeler(HFLabeler):
    name = "dinov2"
    Config = Dinov2Config
    model_class = "Dinov2Model"
    example_checkpoint = "facebook/dinov2-base"
    default_resources = Resources(num_cpus=1, num_gpus=0.1, batch_size=64)

    def setup(self) -> None:
        super().setup()
        patch = self.model.config.patch_size
        if self.config.input_size % patch:
            raise ValueError(f"dinov2.input_size {self.config.input_size} is not a multiple of the "
                             f"checkpoint's patch size {patch}")

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        squares = [resized_centre_square(s.image, self.config.input_size) for s in batch]
        inputs = self.processor(images=squares, do_resize=False, do_center_crop=False, return_tensors="pt")
        tokens = self.model(**self.to_device(inputs)).last_hidden_state  # B × (1 + h*w) × C
        n_patches = (self.config.input_size // self.model.config.patch_size) ** 2
        if tokens.shape[1] != 1 + n_patches:  # e.g. register tokens: layout would be ambiguous
            raise ValueError(f"expected 1 + {n_patches} tokens, model returned {tokens.shape[1]}")
        arr = tokens.float().cpu().numpy().astype(np.float16)
        return [encode_npy(a) for a in arr]
