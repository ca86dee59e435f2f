"""Turn stored sequence modalities into text for the WordPiece tokenizer.

The trainer uses the very serializers the text tokenizer was trained with
(``prism4m.tokenizers.serializers``: ml-4m's serialisations, 4M_FORMAT.md §4.2, §7), adapted
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
from typing import Any, Callable

import numpy as np

from prism4m.tokenizers import serializers as stage

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
