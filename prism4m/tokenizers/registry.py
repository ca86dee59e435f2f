"""Tokenizer classes by card type, and ``load_tokenizer`` for any directory or URL.

Built-ins are named by import path (nothing heavy is imported until used); third-party
packages add types under the entry-point group ``prism4m.tokenizers``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from prism4m.tokenizers.card import read_card
from prism4m.tokenizers.text import WordPieceTokenizer

ENTRY_POINT_GROUP = "prism4m.tokenizers"

BUILTIN_TOKENIZERS: dict[str, str] = {
    "vq": "prism4m.tokenizers.vq:VQTokenizer",
    "vq_mask": "prism4m.tokenizers.mask:MaskTokenizer",
    "mlp": "prism4m.tokenizers.mlp:MLPTokenizer",
    "mlp_pose": "prism4m.tokenizers.pose:PoseTokenizer",
    "wordpiece": "prism4m.tokenizers.text:WordPieceTokenizer",
}


def available_tokenizers() -> dict[str, str]:
    out = dict(BUILTIN_TOKENIZERS)
    out.update({ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return out


def get_tokenizer_class(type_name: str) -> type:
    table = available_tokenizers()
    if type_name not in table:
        raise KeyError(f"unknown tokenizer type {type_name!r}; available: {', '.join(sorted(table))}")
    module_name, _, attr = table[type_name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def load_tokenizer(path_or_url: str, device: str = "cpu") -> Any:
    """The tokenizer stored in a directory (local path or fsspec URL), ready to encode.

    A path to ml-4m's published WordPiece JSON (a ``.json`` file, no card) is loaded too.
    """
    url = str(path_or_url)
    if url.endswith(".json"):
        return WordPieceTokenizer.from_json_url(url)
    card = read_card(url)
    return get_tokenizer_class(card.type).load(url, card, device=device)
