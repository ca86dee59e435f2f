"""One sample from raw members: {modality: token ids or None}, every modality on one crop row.

A key's members (tar ``(ext, bytes)`` or Parquet values) become token arrays: invalid
records (zero bytes, listed in the ledger, Parquet nulls) give None; token modalities take
the sample's crop row (chosen at random from ``crop_settings`` when ``random_crop``, else
row 0); sequences are serialized for that crop and tokenized, ending in [EOS].
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from prism4m.contract.members import decode_npy_view
from prism4m.tokenizers.text import EOS_ID

from .modalities import TrainModality
from .sequences import SERIALIZERS, Serializer, decode_member, load_text_tokenizer

CROP_FOLDER = "crop_settings"


class SampleDecoder:
    """Raw members of one key -> {modality: token ids or None}, sharing one crop row."""

    def __init__(
        self,
        registry: Mapping[str, TrainModality],
        text_tokenizer: Any = None,
        serializers: Mapping[str, Serializer] | None = None,
        random_crop: bool = True,
    ) -> None:
        self.registry = dict(registry)
        self.text_tokenizer = load_text_tokenizer(text_tokenizer)
        self.serializers = {**SERIALIZERS, **(serializers or {})}
        self.random_crop = random_crop
        for spec in self.registry.values():
            if spec.is_sequence and self.text_tokenizer is None:
                raise ValueError(f"modality {spec.name} is a sequence: the loader needs a text_tokenizer")

    def folders(self) -> list[str]:
        return [spec.folder for spec in self.registry.values()]

    @staticmethod
    def _value(payload: Any, folder: str, key: str, invalid: Mapping[str, set[str]]) -> Any:
        """Decoded member, or None for invalid records (zero bytes / listed in the ledger)."""
        if payload is None or key in invalid.get(folder, ()):
            return None
        ext, data = payload
        if ext == "parquet":
            return data if data not in (None, [], "") else None
        if len(data) == 0:
            return None
        if ext.endswith("npy"):
            return decode_npy_view(data)
        return decode_member(ext, data)

    def __call__(self, key: str, members: Mapping[str, Any], invalid: Mapping[str, set[str]], rng: np.random.Generator):
        crop_rows = self._value(members.get(CROP_FOLDER), CROP_FOLDER, key, invalid)
        values = {name: self._value(members.get(spec.folder), spec.folder, key, invalid) for name, spec in self.registry.items()}
        if crop_rows is not None:
            crop_rows = np.asarray(crop_rows, dtype=np.int64).reshape(-1, 5)
            n_crops = len(crop_rows)
        else:  # no crop table: any row every token array has
            rows = [np.asarray(v).shape[0] for n, v in values.items() if v is not None and not self.registry[n].is_sequence]
            n_crops = min(rows) if rows else 1
        crop = int(rng.integers(n_crops)) if self.random_crop and n_crops > 1 else 0
        crop_row = crop_rows[crop] if crop_rows is not None else None
        sample: dict[str, np.ndarray | None] = {}
        for name, spec in self.registry.items():
            value = values[name]
            if value is None:
                sample[name] = None
            elif spec.is_sequence:
                sample[name] = self._tokenize(spec, value, crop, crop_row, rng)
            else:
                tokens = np.asarray(value)
                if tokens.ndim == 1:
                    tokens = tokens[None]
                if tokens.shape[0] <= crop:
                    raise ValueError(f"sample {key}: {spec.folder} has {tokens.shape[0]} crop rows, crop {crop} requested")
                row = tokens[crop].astype(np.int64)
                if row.shape[0] != spec.num_tokens:
                    raise ValueError(f"sample {key}: {spec.folder} has {row.shape[0]} tokens, registry says {spec.num_tokens}")
                sample[name] = row
        return sample

    def _tokenize(self, spec: TrainModality, value: Any, crop: int, crop_row, rng) -> np.ndarray | None:
        base = spec.folder.split("@")[0]
        serializer = self.serializers.get(base)
        if serializer is None:
            if not isinstance(value, str):
                raise ValueError(f"no serializer for sequence folder {spec.folder!r}; pass one in serializers=")
            text = value
        else:
            text = serializer(value, crop, crop_row, rng)
        if text is None:  # nothing usable; an empty string still means "[EOS]" (e.g. no boxes)
            return None
        ids = self.text_tokenizer.encode(text).ids[: spec.num_tokens - 1] + [EOS_ID]
        return np.asarray(ids, dtype=np.int64)
