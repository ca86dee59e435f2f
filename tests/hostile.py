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


# ---------------------------------------------------------------------- containers and special files
def jpeg_bytes(seed: int, size=(120, 90)) -> bytes:
    buf = io.BytesIO()
    _photo(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tar_bytes(members: list[tuple]) -> bytes:
    """A tar of ``(name, data)`` files, ``(name, "symlink"|"hardlink", target)`` links and
    ``(name, "fifo")`` named-pipe entries, in that order (names are written as given)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, *target in members:
            info = tarfile.TarInfo(name)
            if data in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if data == "symlink" else tarfile.LNKTYPE
                info.linkname = target[0]
                tar.addfile(info)
            elif data == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def big_jpeg(width: int, height: int) -> bytes:
    """A real, fully decodable gray JPEG of width×height (180 MP is ~2 MB and decodes in draft mode)."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def make_fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes (none will)."""
    import os

    os.mkfifo(path)
    return path


def make_socket(path: Path):
    """A bound Unix socket file at ``path``; keep the returned socket open while it is needed."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def write_img2dataset_output(d: Path, n: int = 3) -> list[str]:
    """An img2dataset output folder as it writes it: a webdataset shard `00000.tar` and a
    files-format folder `00001/`, each with its metadata Parquet and `_stats.json`.
    Returns the captions of the images it holds."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    captions, members = [], []
    for i in range(n):
        key = f"00000{i:04d}"
        captions.append(f"webdataset caption {i}")
        members += [(f"{key}.jpg", jpeg_bytes(100 + i)), (f"{key}.txt", captions[-1].encode()),
                    (f"{key}.json", json.dumps({"url": f"http://x/{i}", "key": key, "status": "success"}).encode())]
    (d / "00000.tar").write_bytes(tar_bytes(members))
    (d / "00001").mkdir()
    for i in range(n):
        key = f"00001{i:04d}"
        captions.append(f"files caption {i}")
        (d / "00001" / f"{key}.jpg").write_bytes(jpeg_bytes(200 + i))
        (d / "00001" / f"{key}.txt").write_text(captions[-1])
        (d / "00001" / f"{key}.json").write_text(json.dumps({"url": f"http://y/{i}", "key": key}))
    for shard in ("00000", "00001"):
        meta = pa.table({"url": [f"http://{shard}/{i}" for i in range(n)], "key": [f"{shard}{i:04d}" for i in range(n)],
                         "caption": [f"c{i}" for i in range(n)], "status": ["success"] * n,
                         "error_message": [None] * n, "width": [120] * n, "height": [90] * n})
        pq.write_table(meta, d / f"{shard}.parquet")
        (d / f"{shard}_stats.json").write_text(json.dumps({"count": n, "successes": n, "failed_to_download": 0}))
    return captions
