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


def write_photo_corpus(directory: str | Path, names: tuple[str, ...] = DEMO_PHOTOS) -> Path:
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        img = load_photo(name)
        # RGBA and grayscale stay PNG (lossless, and they exercise alpha/gray conversion).
        ext = "png" if img.ndim == 2 or img.shape[-1] == 4 else "jpg"
        Image.fromarray(img).save(directory / f"{name}.{ext}")
    return directory


if __name__ == "__main__":
    out = write_photo_corpus(sys.argv[1] if len(sys.argv) > 1 else "demo-out/corpus")
    print(f"wrote {len(DEMO_PHOTOS)} photos to {out}")
