"""Tokenizer reconstructions for the gallery: label crop → tokens → decoded, side by side.

Uses prism4m.tokenizers' `load_tokenizer` (a directory with card.json). Image-like tokenizers
show the encoder's input crop (crop_settings row 0) next to the decoded crop, with PSNR for
0..255 modalities; class maps are drawn with the semseg palette; feature/global tokenizers
report cosine similarity; WordPiece tokenizers show the serialised label as the tokenizer
reads it back. When the tokenizer package cannot be imported the report says so and goes on.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from prism4m.contract.crop_settings import centre_square
from prism4m.report.colors import class_palette, colormap
from prism4m.report.render import Panel


@dataclass
class LoadedTokenizer:
    path: str
    tok: object
    folders: tuple[str, ...]   # source folders it reads (a text tokenizer reads every sequence folder)
    label: str                 # short name for the gallery column


def load_tokenizers(dirs: list[str]) -> tuple[list[LoadedTokenizer], list[str]]:
    """(tokenizers that loaded, notes about the ones that did not)."""
    notes: list[str] = []
    try:
        from prism4m.tokenizers import load_tokenizer
        from prism4m.modality.specs import get_spec
    except ImportError as exc:
        return [], [f"tokenizer reconstructions skipped: prism4m.tokenizers is not importable ({exc})"]
    out = []
    for d in dirs:
        try:
            tok = load_tokenizer(d)
            card = tok.card
            if card.type == "wordpiece":
                from prism4m.modality.serializers import SERIALIZERS

                folders = tuple(SERIALIZERS)
            else:
                folders = (get_spec(card.modality).folder,)
            rw = " [RANDOM WEIGHTS]" if getattr(card, "random_weights", False) else ""
            out.append(LoadedTokenizer(str(d), tok, folders, f"{card.type}:{card.modality} v{card.vocab_size}{rw}"))
        except Exception as exc:
            notes.append(f"tokenizer {d}: not loaded: {type(exc).__name__}: {str(exc)[:200]}")
    return out, notes


def _to_hwc(x: np.ndarray) -> np.ndarray:
    """(C, S, S) or (S, S) → (S, S[, C])."""
    return np.moveaxis(x, 0, -1) if x.ndim == 3 else x


def _display(spec, x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """One encoder-space crop → uint8 image (RGB or L)."""
    if spec.kind == "classes":
        ids = (np.asarray(x).astype(np.int64) - 1) % 256  # undo ml-4m's shift_idx_by_one
        lut = class_palette(256)
        lut[255] = 0
        return lut[ids]
    x = _to_hwc(x)
    if spec.normalise == "unit":
        img = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    src = _to_hwc(ref) if ref is not None else x
    v = x[..., 0] if x.ndim == 3 else x
    s = src[..., 0] if src.ndim == 3 else src
    lo, hi = np.percentile(s, [2, 98])
    return colormap(-v, -hi, -lo)  # depth: near = bright, as in the label column


def reconstruct(lt: LoadedTokenizer, folder: str, data: bytes, crops: np.ndarray | None, image_hw: tuple[int, int]) -> Panel:
    """The reconstruction panel of one sample (never raises)."""
    tok = lt.tok
    try:
        if getattr(tok.card, "type", "") == "wordpiece":
            return _text_panel(tok, folder, data, crops, image_hw)
        from prism4m.modality.specs import decode_value

        spec = tok.spec
        value = decode_value(spec, data)
        rows = crops[:1] if crops is not None else _centre_row(image_hw)
        x = tok.prepare(value, rows, image_hw)
        ids = tok.encode(x)
        rec = tok.decode(ids)
        if spec.kind in ("feature", "global"):
            a, b = np.asarray(x, np.float64).ravel(), np.asarray(rec, np.float64).ravel()
            cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            return Panel(None, f"{ids.shape[1]} tokens; cosine(input, reconstruction) = {cos:.3f}")
        left, right = _display(spec, x[0], x[0]), _display(spec, rec[0], x[0])
        pair = np.concatenate([left, np.full((left.shape[0], 4) + left.shape[2:], 255, np.uint8), right], axis=1)
        note = f"{ids.shape[1]} tokens; input crop | reconstruction"
        if spec.normalise == "unit":
            mse = float(np.mean((left.astype(np.float64) - right.astype(np.float64)) ** 2))
            note += f"; PSNR {10 * np.log10(255 ** 2 / max(mse, 1e-10)):.1f} dB"
        elif spec.kind == "classes":
            note += f"; pixel agreement {float((np.asarray(x[0]) == np.asarray(rec[0])).mean()):.1%}"
        return Panel(Image.fromarray(pair), note)
    except Exception as exc:
        return Panel(None, f"<b>reconstruction failed</b>: {html.escape(type(exc).__name__)}: "
                           f"{html.escape(str(exc)[:200])}")


def _centre_row(hw: tuple[int, int]) -> np.ndarray:
    return np.array([[*centre_square(*hw), 0]], dtype=np.int64)


def _text_panel(tok, folder: str, data: bytes, crops, image_hw) -> Panel:
    from prism4m.modality.serializers import SERIALIZERS

    text = data.decode("utf-8", "replace")
    if folder in SERIALIZERS:
        value = text if folder == "caption" else json.loads(text)
        row = crops[0] if crops is not None else None
        text = SERIALIZERS[folder](value, crop_row=row, image_hw=image_hw)
    ids = tok.encode(text)
    back = tok.decode(ids)
    return Panel(None, f"{len(ids)} tokens → <code>{html.escape(back[:400])}</code>")
