"""crop_settings: the crops every tokenizer applies to every modality (Invariant 4).

Row 0 is the centred square of side min(h, w) without flip; rows 1.. follow the
RandomResizedCrop recipe (area scale, log-uniform aspect ratio, 10 tries then the centre
fallback) with a horizontal flip at probability 0.5. Rows are (top, left, h, w, hflip) in
pixels of the ingested image, int64, and depend only on (seed, key, h, w): deterministic
whatever the worker or the order.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def centre_square(h: int, w: int) -> tuple[int, int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def random_resized_crop(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    # Fallback: the largest centred crop whose aspect lies within the ratio range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_settings(key: str, h: int, w: int, *, n_crops: int, seed: int,
                  scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                  hflip_p: float = 0.5) -> np.ndarray:
    rows = [(*centre_square(h, w), 0)]
    rng = _rng(seed, key)
    for _ in range(n_crops - 1):
        top, left, ch, cw = random_resized_crop(rng, h, w, scale, ratio)
        rows.append((top, left, ch, cw, int(rng.random() < hflip_p)))
    return np.asarray(rows, dtype=np.int64)
