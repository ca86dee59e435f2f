"""Encoders for label members, shared by every labeler (one place decides PNG/JSON bytes)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """uint8 H×W (L), H×W×3 (RGB) or uint16 H×W (I;16) → PNG bytes, losslessly."""
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ValueError("16-bit PNG must be single-channel")
        img = Image.fromarray(array)  # mode I;16
    elif array.dtype == np.uint8:
        img = Image.fromarray(array)
    else:
        raise ValueError(f"cannot encode dtype {array.dtype} as PNG")
    buf = io.BytesIO()
    # compress_level 1: edge/label maps compress well already; level 6 costs 3x the time.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    return np.asarray(img)


def encode_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def decode_npy_view(data: bytes) -> np.ndarray:
    """decode_npy for hot loops (the trainer's loader): a read-only view of ``data``, with the
    header parse cached per header (parsing it dominated decoding). Same refusals as decode_npy."""
    if data[:6] != b"\x93NUMPY" or data[6:7] != b"\x01":
        return decode_npy(data)
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        buf = io.BytesIO(data)
        np.lib.format.read_magic(buf)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        if dtype.hasobject:
            return decode_npy(data)  # refused there (no pickles)
        parsed = _NPY_HEADERS[header] = (dtype, shape, fortran)
    dtype, shape, fortran = parsed
    array = np.frombuffer(data, dtype=dtype, offset=10 + header_len, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")
