"""The text side of the loader: sequence members to text, and the text tokenizer.

The trainer uses the very serializers the text tokenizer was trained with
(``prism4m.modality.serializers``: ml-4m's serialisations, 4M_FORMAT.md §4.2, §7), adapted
to the loader's call: every serializer gets the decoded member (str / JSON object), the crop
index, the crop row ``(top, left, h, w, hflip)`` chosen for the sample (or None) and the
sample's RNG, and returns the text to tokenize, or None when the member holds nothing usable.

Folders are looked up by their name before "@": label folders (``caption``, ``det``, …) and
sequences built by the tokenize stage (``sam_instance@224``, ``human_poses@tok``).

Known simplification: the rgb image size is not in the token shards, so det boxes (already
normalised) are cropped in full-image terms; human_poses@tok members carry their own size.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any, Callable

import fsspec
import numpy as np

from prism4m.modality import serializers as stage
from prism4m.tokenizers.card import CARD_FILE
from prism4m.tokenizers.text import TOKENIZER_FILE

Serializer = Callable[[Any, int, "np.ndarray | None", np.random.Generator], "str | None"]


def _adapt(name: str, fn: Callable[..., str]) -> Serializer:
    if name == "caption":
        return lambda v, ci, cr, rng: fn(v, cr, None, rng, crop_index=ci) or None
    return lambda v, ci, cr, rng: fn(v, cr, None, rng)


SERIALIZERS: dict[str, Serializer] = {
    name: _adapt(name, fn) for name, fn in {**stage.SERIALIZERS, **stage.TOKEN_FOLDER_SERIALIZERS}.items()
}


def decode_member(ext: str, data: bytes) -> Any:
    """Decode a sequence-modality member by extension (.txt -> str, .json -> object)."""
    if ext.endswith("json"):
        return json.loads(data)
    return data.decode("utf-8")


def load_text_tokenizer(tokenizer: Any):
    """A HF ``tokenizers.Tokenizer`` from an object, a tokenizer.json path/URL or its directory."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from tokenizers import Tokenizer

    path = str(tokenizer)
    if not path.endswith(".json"):  # a tokenizer directory (card.json + tokenizer.json)
        path = f"{path.rstrip('/')}/{TOKENIZER_FILE}"
    with fsspec.open(path, "r") as f:
        return Tokenizer.from_str(f.read())


def text_tokenizer_card(tokenizer: Any) -> dict[str, Any]:
    """The card (card.json) of a text tokenizer directory, or of the directory holding a
    tokenizer.json; {} when there is none (ml-4m's published JSON, an in-memory tokenizer)."""
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return {}
    path = str(tokenizer)
    directory = posixpath.dirname(path.rstrip("/")) if path.endswith(".json") else path.rstrip("/")
    try:
        with fsspec.open(f"{directory}/{CARD_FILE}", "r") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}
