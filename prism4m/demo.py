"""The bundled demo corpus: real photographs that ship inside scikit-image's wheel.

`python -m prism4m.demo DIR` writes them as JPEG/PNG files (a few as PNG with transparency or
grayscale, so the demo exercises conversion too). No network is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
               "immunohistochemistry", "camera", "coins", "horse", "moon", "page", "clock", "retina",
               "logo", "colorwheel", "grass", "brick", "gravel", "text")


def load_photo(name: str) -> np.ndarray:
    from skimage import data

    img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return img


def corner_windows(img: np.ndarray, n: int, fraction: float = 0.6) -> list[np.ndarray]:
    """Up to four square windows (side ``fraction`` of the short side) at the image corners."""
    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * fraction)))
    corners = [(0, 0), (0, w - side), (h - side, 0), (h - side, w - side)]
    return [img[t:t + side, l:l + side] for t, l in corners[:n]]


def write_photo_corpus(directory: str | Path, names: tuple[str, ...] = DEMO_PHOTOS, windows: int = 0) -> Path:
    """The photos as files; with ``windows`` > 0, one folder per photo holding the photo and
    that many corner windows cut from it.

    The windows give the tiny 4M run more (overlapping) training images; keeping each photo's
    files in one folder keeps them together in sorted order, so with shard_size 1 + windows
    a shard is exactly one photo and a held-out shard shares no pixels with training."""
    from PIL import Image

    directory = Path(directory)
    for name in names:
        img = load_photo(name)
        # RGBA and grayscale stay PNG (lossless, and they exercise alpha/gray conversion).
        ext = "png" if img.ndim == 2 or img.shape[-1] == 4 else "jpg"
        folder = directory / name if windows else directory
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{name}.{ext}")
        for i, window in enumerate(corner_windows(img, windows)):
            Image.fromarray(np.ascontiguousarray(window)).save(folder / f"{name}-window{i}.{ext}")
    return directory


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--windows=")]
    n_windows = next((int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--windows=")), 4)
    out = write_photo_corpus(args[0] if args else "demo-out/corpus", windows=n_windows)
    print(f"wrote {len(DEMO_PHOTOS)} photos and {n_windows} corner windows of each to {out}")
