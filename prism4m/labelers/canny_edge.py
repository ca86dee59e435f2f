"""Canny edges (4M-21 `canny_edge`): OpenCV's Canny on the grayscale image.

4M does not publish its thresholds (4M_FORMAT.md §7); we default to the common automatic rule:
thresholds at (1 ± sigma) × the median intensity after a Gaussian blur, which adapts to dark
and bright photos. Fixed thresholds are available with `low`/`high`.
Output: 8-bit single-channel PNG at the rgb/ resolution, 255 on edges, 0 elsewhere.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, Resources
from prism4m.contract.members import encode_png


class CannyEdgeConfig(LabelerConfig):
    blur_sigma: float = Field(1.0, ge=0, description="Gaussian blur before Canny (0 = none)")
    low: int | None = Field(None, ge=0, le=255, description="fixed low threshold (None = automatic)")
    high: int | None = Field(None, ge=0, le=255, description="fixed high threshold (None = automatic)")
    auto_sigma: float = Field(0.33, gt=0, lt=1, description="automatic thresholds: (1±sigma)·median")


def canny_edges(image: np.ndarray, cfg: CannyEdgeConfig) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if cfg.blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), cfg.blur_sigma)
    if cfg.low is not None and cfg.high is not None:
        low, high = cfg.low, cfg.high
    else:
        median = float(np.median(gray))
        low = int(max(0, (1.0 - cfg.auto_sigma) * median))
        high = int(min(255, (1.0 + cfg.auto_sigma) * median))
        high = max(high, low + 1)
    return cv2.Canny(gray, low, high)


class CannyEdgeLabeler(Labeler):
    name = "canny_edge"
    Config = CannyEdgeConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)
    uses_torch = False

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        return [encode_png(canny_edges(s.image, self.config)) for s in batch]
