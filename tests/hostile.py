"""A corpus of hostile input files, each with the outcome a user should see."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(seed: int, size=(120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BILINEAR)


def png_bomb(width: int, height: int) -> bytes:
    """A valid, tiny PNG that claims width×height 8-bit gray pixels (all zero)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    raw = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()  # enough for the header check
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def write_hostile_corpus(d: Path) -> dict[str, str]:
    """Write the files; returns {file name: expected outcome} ('ok', 'duplicate' or a reason code)."""
    d.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    good = io.BytesIO()
    _photo(1).save(good, "JPEG", quality=90)
    (d / "good.jpg").write_bytes(good.getvalue())
    expected["good.jpg"] = "ok"
    (d / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated"
    (d / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "empty"
    (d / "text.jpg").write_text("this is not a picture\n")
    expected["text.jpg"] = "undecodable"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(d / "one_pixel.png")
    expected["one_pixel.png"] = "too_small"
    (d / "bomb.png").write_bytes(png_bomb(20000, 20000))
    expected["bomb.png"] = "too_large"
    _photo(2).convert("CMYK").save(d / "cmyk.jpg", "JPEG")
    expected["cmyk.jpg"] = "ok"
    arr16 = (np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16)
    Image.fromarray(arr16).save(d / "gray16.png")
    expected["gray16.png"] = "ok"
    pal = _photo(3).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette_transparent.png", transparency=0)
    expected["palette_transparent.png"] = "ok"
    # EXIF orientation 6: stored 120×90 (landscape), displayed rotated to 90×120 (portrait).
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(4).save(d / "exif_rotated.jpg", "JPEG", exif=exif.tobytes())
    expected["exif_rotated.jpg"] = "ok"
    frames = [_photo(10 + i) for i in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["animated.gif"] = "ok"
    for name in ("name with spaces.jpg", "many.dots.in.name.jpg", "ünïcödé 写真.jpg"):
        buf = io.BytesIO()
        _photo(hash(name) % 1000 + 20).save(buf, "JPEG")
        (d / name).write_bytes(buf.getvalue())
        expected[name] = "ok"
    (d / "good_copy.jpg").write_bytes(good.getvalue())
    expected["good_copy.jpg"] = "duplicate"
    (d / "notes.md").write_text("# not an image\n")
    expected["notes.md"] = "unsupported"
    return expected
