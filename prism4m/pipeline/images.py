"""Decode one input image and normalise it: EXIF orientation, RGB, short side S, JPEG.

Every refusal raises BadImage with a reason code that `status` counts:
empty, undecodable, truncated, too_small, too_large, unsupported.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Formats we accept; anything else PIL can open (PSD, ICO, EPS, …) is refused as unsupported.
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
REASONS = ("empty", "undecodable", "truncated", "too_small", "too_large", "unsupported")


class BadImage(Exception):
    def __init__(self, reason: str, message: str):
        assert reason in REASONS
        super().__init__(message)
        self.reason = reason


@dataclass
class NormalizedImage:
    jpeg: bytes
    width: int                 # after resizing
    height: int
    original_width: int        # after EXIF orientation, before resizing
    original_height: int
    original_mode: str
    format: str
    exif_orientation: int


def _alpha_over_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, compositing transparency over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _alpha_over_white(img)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data (I;16 or I holding 0..65535): keep the top 8 bits' worth of range.
        arr = arr / 257.0 if mode.startswith("I;16") or arr.max() > 255 else arr
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


@contextmanager
def _pillow_pixel_limit(max_pixels: int):
    """Pillow's own bomb guard (Image.MAX_IMAGE_PIXELS, a process global) set to ours.

    Pillow refuses images above twice its limit when opening them (and GIF frames while
    loading): left at its default it would refuse a larger configured ``max_pixels`` first.
    Ours is checked on the header right after opening; Pillow's stays on as a backstop for
    frames, at the same limit. Ingest decodes one image at a time per worker process.
    """
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours says it in one line
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


# Pillow's antialiased resize filters offered for the short-side resize (ingest's resize_filter).
RESIZE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "hamming": Image.Resampling.HAMMING}


# A unit of at least this many images resizes with the vectorised kernel: Pillow's bicubic took
# 7.3 ms of a 1024×768 image's ~15, the kernel 2.9 ms, so the torch import (1-2.5 s per worker)
# pays for itself after ~250-570 images. Decided per unit from its size alone, so a unit's
# bytes never depend on what its worker ran before (a resumed unit is byte-identical).
VECTORISED_RESIZE_MIN_IMAGES = 256

# Pillow's resize with reducing_gap=3 first box-reduces by an integer factor when the image is
# at least 2×3 times the target; below that it is a plain antialiased resample.
_REDUCING_GAP = 3.0


def resize(rgb: Image.Image, size: tuple[int, int], resample: Image.Resampling,
           vectorised: bool = False) -> Image.Image:
    """Pillow's antialiased ``resample`` of an RGB image to ``size`` (w, h), reducing gap 3.

    ``vectorised``: bicubic resizes that Pillow does as one plain resample (below 2×reducing
    gap per axis: every JPEG, which its DCT draft brings within 2× of the target) run on
    torch's antialiased uint8 kernel instead. It is Pillow's algorithm (a = -0.5, fixed-point,
    rounded between passes), vectorised: ~2.5× faster with the conversions, at most 2 grey
    levels apart on ≤ 0.5% of values (74 dB; skimage's photos; tests/test_ingest_speed.py).
    It costs a torch import (1-2.5 s) in the process, so ingest uses it for large units only
    (VECTORISED_RESIZE_MIN_IMAGES).
    """
    w, h = rgb.size
    plain = w < 2 * _REDUCING_GAP * size[0] and h < 2 * _REDUCING_GAP * size[1]
    if not vectorised or resample != Image.Resampling.BICUBIC or not plain or rgb.mode != "RGB":
        return rgb.resize(size, resample, reducing_gap=_REDUCING_GAP)
    import torch
    import torch.nn.functional as F

    # Pillow's packed RGB bytes viewed as an NCHW tensor with channels-last strides: the layout
    # the vectorised kernel wants, without another copy.
    hwc = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(1, h, w, 3)
    out = F.interpolate(hwc.permute(0, 3, 1, 2), size=(size[1], size[0]), mode="bicubic", antialias=True)
    return Image.fromarray(out[0].permute(1, 2, 0).contiguous().numpy(), "RGB")


def normalize_image(data: bytes, *, short_side: int, jpeg_quality: int, min_side: int,
                    max_pixels: int, name: str = "", subsampling: str | None = None,
                    resize_filter: str = "bicubic", vectorised_resize: bool = False) -> NormalizedImage:
    if not data:
        raise BadImage("empty", f"{name}: file is empty (0 bytes)")
    with _pillow_pixel_limit(max_pixels):
        return _normalize(data, short_side=short_side, jpeg_quality=jpeg_quality, min_side=min_side,
                          max_pixels=max_pixels, name=name,
                          subsampling=subsampling or ("4:4:4" if jpeg_quality >= 90 else "4:2:0"),
                          resample=RESIZE_FILTERS[resize_filter], vectorised=vectorised_resize)


def _normalize(data: bytes, *, short_side: int, jpeg_quality: int, min_side: int, max_pixels: int,
               name: str, subsampling: str, resample: Image.Resampling, vectorised: bool) -> NormalizedImage:
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("undecodable", f"{name}: not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise BadImage("too_large", f"{name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any header failure means undecodable
        raise BadImage("undecodable", f"{name}: {type(exc).__name__}: {exc}") from None
    fmt = img.format or "?"
    if fmt not in ACCEPTED_FORMATS:
        raise BadImage("unsupported", f"{name}: image format {fmt} is not supported")
    w, h = img.size
    # Checked on the header, before any pixel is decoded: a PNG bomb never gets expanded.
    if w * h > max_pixels:
        raise BadImage("too_large", f"{name}: {w}×{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} "
                                    "(decompression-bomb guard)")
    if min(w, h) < min_side:
        raise BadImage("too_small", f"{name}: {w}×{h} is smaller than min_side={min_side}")
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        orientation = 1
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        if fmt in ("JPEG", "MPO"):
            # Decode at a reduced DCT scale (1/2, 1/4, 1/8) when the target is ≥2x smaller: the
            # decoder then does most of the downscaling, and the resize below starts from an image
            # still at least as large as the target. The short side is the same before and after
            # EXIF orientation, so rotated photos (most phone JPEGs, often MPO) get it too.
            scale = short_side / min(w, h)
            if scale <= 0.5:
                img.draft("RGB", (int(w * scale) + 1, int(h * scale) + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        mode = img.mode
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        rgb = to_rgb(img)
    except Image.DecompressionBombError as exc:  # a frame larger than the header said
        raise BadImage("too_large", f"{name}: {exc}") from None
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg or "broken data stream" in msg or "unrecognized data stream" in msg else "undecodable"
        raise BadImage(reason, f"{name}: {msg}") from None
    except Exception as exc:  # noqa: BLE001
        raise BadImage("undecodable", f"{name}: {type(exc).__name__}: {exc}") from None
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    rw, rh = rgb.size
    s = short_side / min(rw, rh)
    new = (max(1, round(rw * s)), max(1, round(rh * s)))
    if new != (rw, rh):
        rgb = resize(rgb, new, resample, vectorised)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=jpeg_quality, subsampling=subsampling)
    return NormalizedImage(buf.getvalue(), new[0], new[1], ow, oh, mode, fmt, orientation)
