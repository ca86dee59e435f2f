"""Tokenizer models: VQ (vq, mask), MLP (mlp, pose), WordPiece (text), their card and registry.

``load_tokenizer(path_or_url)`` loads any tokenizer directory (card.json + weights); torch is
imported only when a model is. The stages that use tokenizers are in prism4m.pipeline
(tokenizer_training, tokenize, export).
"""

from prism4m.tokenizers.card import TokenizerCard, read_card
from prism4m.tokenizers.registry import available_tokenizers, load_tokenizer

__all__ = ["TokenizerCard", "available_tokenizers", "load_tokenizer", "read_card"]
