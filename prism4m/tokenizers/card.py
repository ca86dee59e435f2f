"""The tokenizer card: what a tokenizer directory says about itself (``card.json``).

A tokenizer directory holds ``card.json`` plus its weights (``weights.safetensors`` for
VQ/MLP, ``tokenizer.json`` for WordPiece). The card describes the token-producing function
(type, modality, vocabulary, grid, input size, normalisation, architecture, weights hash)
and how it was obtained (training data, config hash, reconstruction metrics, codebook usage).
Two honesty flags: ``random_weights`` (the tokenizer itself never trained) and
``trained_on_random_weights`` (it trained on labels a random-weight model produced); a token
folder written by either carries ``random_weights`` in its ledger (the tokenize stage, prism4m.pipeline.tokenize).

``card_hash`` covers only the fields that change the tokens a sample gets: the ledger of a
token folder records it, so swapping in a different tokenizer makes those shards stale
while re-training metrics or re-writing the card's prose does not.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict, Field

CARD_FILE = "card.json"
CARD_FORMAT = "prism4m-tokenizer/1"
#: token files hold int16 ids (0..32767): no vocabulary may be larger
MAX_VOCAB = 2**15
#: fields whose change changes the tokens (see module docstring)
_IDENTITY_FIELDS = ("type", "modality", "vocab_size", "n_tokens", "token_grid", "input_size",
                    "patch_size", "normalisation", "architecture", "weights")


class TokenizerCard(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: str = CARD_FORMAT
    type: str = Field(description="registry type: vq, mlp, wordpiece")
    modality: str = Field(description="source folder it reads, e.g. rgb, canny_edge, dinov2_global")
    token_folder: str | None = Field(None, description="default output folder, e.g. tok_rgb@224")
    vocab_size: int
    n_tokens: int | None = Field(None, description="tokens per crop (None for text)")
    token_grid: list[int] | None = Field(None, description="[h, w] of image tokens, row-major")
    input_size: int | None = Field(None, description="side of the square crop fed to the encoder")
    patch_size: int | None = Field(None, description="rgb pixels per token side")
    normalisation: dict[str, Any] = Field(default_factory=dict)
    architecture: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, Any] = Field(default_factory=dict, description="{file, sha256}")
    training: dict[str, Any] = Field(default_factory=dict, description="data, config, config_hash, steps")
    metrics: dict[str, Any] = Field(default_factory=dict, description="held-out reconstruction metrics")
    codebook: dict[str, Any] = Field(default_factory=dict, description="perplexity, usage share")
    random_weights: bool = Field(False, description="the tokenizer's own weights are untrained (0 steps)")
    trained_on_random_weights: bool = Field(False, description="its training data came from random-weight "
                                            "labels: tokens for smoke tests, not for models")
    created_at: str | None = None

    @property
    def from_random_weights(self) -> bool:
        """Tokens from this tokenizer are not real: random weights, or trained on random-weight labels."""
        return self.random_weights or self.trained_on_random_weights

    def card_hash(self) -> str:
        """Identity of the token-producing function (16 hex chars)."""
        ident = {k: getattr(self, k) for k in _IDENTITY_FIELDS}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def join_url(base: str, name: str) -> str:
    """``base/name`` for local paths and fsspec URLs alike."""
    return base.rstrip("/") + "/" + name if "://" in base else posixpath.join(base, name)


def read_card(path_or_url: str) -> TokenizerCard:
    with fsspec.open(join_url(str(path_or_url), CARD_FILE), "r") as f:
        return TokenizerCard.model_validate(json.load(f))


def write_card(out_dir: str, card: TokenizerCard) -> None:
    fs, path = fsspec.core.url_to_fs(str(out_dir))
    fs.makedirs(path, exist_ok=True)
    data = json.dumps(card.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    tmp = posixpath.join(path, CARD_FILE + ".tmp")
    fs.pipe_file(tmp, data)
    fs.mv(tmp, posixpath.join(path, CARD_FILE))  # a reader never sees half a card
