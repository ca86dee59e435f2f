"""Relative depth (4M `depth`) from a transformers depth-estimation model (Depth Anything V2, DPT).

Output: 16-bit single-channel PNG at the rgb/ resolution.

Normalisation (per image, recorded in the member itself):
1. the model's prediction (Depth Anything / DPT-MiDaS predict *relative disparity*: larger =
   nearer, up to an unknown scale and shift) is upsampled to the rgb size (bicubic);
2. min-max mapped to 0..65535: `v = round((p - p_min) / (p_max - p_min) * 65535)`;
3. stored with `larger: farther` by default (4M's depth, Omnidata, is larger = farther): for a
   disparity model the map is flipped, `v → 65535 - v`. This is a monotone flip of relative
   values, not a reciprocal (an affine-invariant disparity has no meaningful reciprocal).
   4M's DepthTransform standardises each image (truncated, 10%..90%), so only the ordering and
   relative spacing matter to it.

The per-image `p_min`, `p_max` and the conventions go into a PNG tEXt chunk with keyword
`prism4m` (JSON), readable without pickle: `json.loads(Image.open(f).text["prism4m"])` →
`{"p_min", "p_max", "model_output": "disparity"|"depth", "larger": "farther"|"nearer"}`.
The raw prediction is `p = p_min + u * (p_max - p_min)` with `u = v/65535` (or `1 - v/65535`
when the map was flipped, i.e. model_output's meaning differs from `larger`). Decoders that
ignore ancillary chunks (ml-4m, PIL's array view) see a plain 16-bit PNG. A constant
prediction (p_max == p_min) is stored as all zeros.
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig

PNG_TEXT_KEY = "prism4m"


class DepthConfig(HFLabelerConfig):
    model_output: Literal["disparity", "depth"] = Field(
        "disparity", description="what the model predicts (Depth Anything, DPT/MiDaS: disparity)")
    larger: Literal["farther", "nearer"] = Field(
        "farther", description="stored convention: larger values are farther (4M) or nearer")


def encode_depth_png(depth: np.ndarray, meta: dict) -> bytes:
    """uint16 H×W → 16-bit PNG carrying `meta` as JSON in a tEXt chunk.

    Not encoding.encode_png: that one cannot attach text chunks (and passes `mode=` to
    Image.fromarray, which Pillow 13 rejects for uint16); same compression level.
    """
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_TEXT_KEY, json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(depth).save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()


def read_depth_normalisation(png: bytes) -> dict | None:
    """The JSON recorded by DepthLabeler, or None for a PNG without it."""
    from PIL import Image

    text = getattr(Image.open(io.BytesIO(png)), "text", {})
    return json.loads(text[PNG_TEXT_KEY]) if PNG_TEXT_KEY in text else None


def quantise_depth(pred: np.ndarray, flip: bool) -> tuple[np.ndarray, float, float]:
    """float map → uint16 0..65535 by per-image min-max (optionally flipped), with min and max."""
    lo, hi = float(pred.min()), float(pred.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("depth prediction has non-finite values")
    if hi <= lo:
        return np.zeros(pred.shape, np.uint16), lo, hi
    u = (pred.astype(np.float64) - lo) / (hi - lo)
    if flip:
        u = 1.0 - u
    return np.round(u * 65535).astype(np.uint16), lo, hi


class DepthLabeler(HFLabeler):
    name = "depth"
    Config = DepthConfig
    model_class = "AutoModelForDepthEstimation"
    example_checkpoint = "depth-anything/Depth-Anything-V2-Small-hf"
    default_resources = Resources(num_cpus=1, num_gpus=0.2, batch_size=16)

    def predict_maps(self, batch: list[LabelInput]) -> list[np.ndarray]:
        """Raw predictions upsampled (bicubic) to each image's size, float32 H×W."""
        import torch.nn.functional as F

        out: list[np.ndarray | None] = [None] * len(batch)
        for idx, inputs in self.processed_groups([s.image for s in batch]):
            pred = self.model(pixel_values=inputs["pixel_values"]).predicted_depth  # B×h×w
            for j, i in enumerate(idx):
                h, w = batch[i].image.shape[:2]
                up = F.interpolate(pred[j][None, None].detach().float(), size=(h, w), mode="bicubic", align_corners=False)
                out[i] = up[0, 0].cpu().numpy()
        return out

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        flip = (self.config.model_output == "disparity") == (self.config.larger == "farther")
        members = []
        for pred in self.predict_maps(batch):
            q, lo, hi = quantise_depth(pred, flip)
            meta = {"p_min": lo, "p_max": hi, "model_output": self.config.model_output,
                    "larger": self.config.larger}
            members.append(encode_depth_png(q, meta))
        return members
