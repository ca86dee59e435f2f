"""Colour for the report: a perceptual colormap, a class palette and COCO-panoptic class names.

matplotlib is not a dependency, so the colormap is a piecewise-linear ramp through a few
anchors sampled by eye from viridis-like hues (dark blue → teal → green → yellow): monotone in
lightness, so near/far reads at a glance and survives greyscale printing.
"""

from __future__ import annotations

import colorsys

import numpy as np

# (position, r, g, b) anchors; lightness increases monotonically
_RAMP = np.array([
    (0.00, 68, 1, 84),
    (0.25, 59, 82, 139),
    (0.50, 33, 145, 140),
    (0.75, 94, 201, 98),
    (1.00, 253, 231, 37),
], dtype=np.float64)


def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scalars (H×W) → uint8 RGB (H×W×3); NaNs are black. Range defaults to the 2nd–98th percentile."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if lo is None or hi is None:
        p_lo, p_hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        lo = p_lo if lo is None else lo
        hi = p_hi if hi is None else hi
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    out = np.stack([np.interp(t, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1)
    out[~np.isfinite(v)] = 0
    return out.round().astype(np.uint8)


def class_color(i: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per class/instance id (golden-ratio hue steps)."""
    h = (i * 0.618033988749895) % 1.0
    s = 0.65 + 0.3 * ((i * 7) % 3) / 2
    v = 0.95 - 0.25 * ((i * 5) % 2)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def class_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 lookup table of class_color."""
    return np.array([class_color(i) for i in range(n)], dtype=np.uint8)


def coco_panoptic_names() -> list[str]:
    """Names of the semseg_coco ids 0..132 (things, then the labeler's stuff order)."""
    from prism4m.labelers.metadata_fields import COCO_PANOPTIC_STUFF, COCO_THINGS

    return list(COCO_THINGS) + list(COCO_PANOPTIC_STUFF)


# COCO keypoint skeleton (indices into the 17 COCO keypoints), limbs coloured by body side.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
