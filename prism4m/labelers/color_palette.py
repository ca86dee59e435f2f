"""Colour palettes (4M-21 `color_palette`): k-means palettes of 1..7 colours.

4M used PyPalette, whose parameters are not published (4M_FORMAT.md §7). We cluster the
pixels of a downsampled copy in RGB with deterministic k-means (farthest-point seeding from
the most common colour, fixed iterations of OpenCV's k-means), for every k in 1..max_colors, and order each
palette by cluster size (dominant colour first).
Output JSON, as ml-4m's ColorPaletteTransform reads it (`sample[0][str(k)]`):
`[{"1": [[r,g,b]], "2": [[r,g,b],[r,g,b]], …, "7": [...]}]`.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, Resources
from prism4m.contract.members import encode_json


class ColorPaletteConfig(LabelerConfig):
    max_colors: int = Field(7, ge=1, le=7, description="palettes of 1..max_colors colours")
    sample_side: int = Field(48, ge=8, description="image downsampled to this side before clustering")
    iterations: int = Field(12, ge=1, description="Lloyd iterations per k")


def _farthest_point_init(pixels: np.ndarray, k: int) -> np.ndarray:
    # Start from the most populated coarse colour bin, then add the farthest pixel each time:
    # deterministic, and it never picks two seeds from one blob.
    coarse = (pixels // 32).astype(np.int64)
    codes = coarse[:, 0] * 64 + coarse[:, 1] * 8 + coarse[:, 2]
    top = np.bincount(codes, minlength=512).argmax()
    centers = [pixels[codes == top].mean(axis=0)]
    dist = ((pixels - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        nxt = pixels[int(dist.argmax())]
        centers.append(nxt)
        dist = np.minimum(dist, ((pixels - nxt) ** 2).sum(axis=1))
    return np.stack(centers).astype(np.float64)


def kmeans_palette(pixels: np.ndarray, k: int, iterations: int) -> list[list[int]]:
    """k colours by Lloyd iterations (OpenCV's k-means, seeded with our deterministic init)."""
    centers = _farthest_point_init(pixels, k).astype(np.float32)
    px = pixels.astype(np.float32)
    labels = ((px[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1).astype(np.int32)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, iterations, 0)
    _, labels, centers = cv2.kmeans(px, k, labels.reshape(-1, 1), criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS)
    counts = np.bincount(labels.ravel(), minlength=k)
    order = np.argsort(-counts, kind="stable")
    return [[int(round(float(v))) for v in np.clip(centers[i], 0, 255)] for i in order]


def color_palettes(image: np.ndarray, cfg: ColorPaletteConfig) -> dict[str, list[list[int]]]:
    h, w = image.shape[:2]
    scale = cfg.sample_side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    pixels = small.reshape(-1, 3).astype(np.float64)
    return {str(k): kmeans_palette(pixels, k, cfg.iterations) for k in range(1, cfg.max_colors + 1)}


class ColorPaletteLabeler(Labeler):
    name = "color_palette"
    Config = ColorPaletteConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)
    uses_torch = False

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        return [encode_json([color_palettes(s.image, self.config)]) for s in batch]
