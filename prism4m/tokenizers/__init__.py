"""Tokenizers (VQ, MLP, WordPiece) and the stages that use them: train, tokenize, export.

Entry points (plain functions; the CLI wraps them):

- ``train_tokenizer(root, modality, out_dir, config)`` — train.py
- ``load_tokenizer(path_or_url)`` — registry.py (a tokenizer directory: card.json + weights)
- ``tokenize(root, tokenizer_dirs, workers=…, force=False)`` — pretokenize.py, which also
  documents how token versions are kept and selected (``token_versions``,
  ``select_token_version``)
- ``export_parquet(root, out=None)`` — export.py

Imports are lazy so that ``import prism4m.tokenizers`` does not pull in torch or Ray.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TokenizerCard": "prism4m.tokenizers.card",
    "read_card": "prism4m.tokenizers.card",
    "load_tokenizer": "prism4m.tokenizers.registry",
    "available_tokenizers": "prism4m.tokenizers.registry",
    "TrainConfig": "prism4m.tokenizers.train",
    "train_tokenizer": "prism4m.tokenizers.train",
    "tokenize": "prism4m.tokenizers.pretokenize",
    "token_versions": "prism4m.tokenizers.pretokenize",
    "select_token_version": "prism4m.tokenizers.pretokenize",
    "export_parquet": "prism4m.tokenizers.export",
    "SERIALIZERS": "prism4m.tokenizers.serializers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prism4m.tokenizers' has no attribute {name!r}")
