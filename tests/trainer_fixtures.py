"""Generated token datasets for the trainer tests and benchmark.

Writes a prism4m root the way DATASET.md describes it: per-folder tars written with
webdataset's TarWriter (one member per sample, same keys in the same order), then the
ledger record last. The tokens are *structured* so that a model can beat the unigram
baseline: each sample has a hidden class; ``tok_a`` draws its tokens from a small
class-specific set, ``tok_b`` is a fixed function of ``tok_a`` at the same position, and
the caption names the class.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Iterable

import fsspec
import numpy as np
import webdataset as wds

CLASS_WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
OTHER_WORDS = ["a", "photo", "of", "thing", "the", "small", "big", "picture"]


def make_text_tokenizer():
    """A tiny WordPiece tokenizer with ml-4m's special-token layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[SOS]", "[EOS]"] + [f"[S_{i}]" for i in range(200)]
    vocab += CLASS_WORDS + OTHER_WORDS
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(vocab[: 204])
    return tok


def structured_sample(rng: np.random.Generator, n_crops: int, vocab_a: int, vocab_b: int, n_tokens: int, n_classes: int = 8):
    cls = int(rng.integers(n_classes))
    per_class = vocab_a // n_classes
    tok_a = cls * per_class + rng.integers(0, 4, size=(n_crops, n_tokens))
    tok_b = (tok_a * 7 + 3) % vocab_b
    size = OTHER_WORDS[6 + int(rng.integers(2))]  # one unpredictable word: "small" / "big"
    caption = f"a {size} photo of {CLASS_WORDS[cls % len(CLASS_WORDS)]}"
    return cls, tok_a.astype(np.int16), tok_b.astype(np.int16), caption


def _tar_bytes(members: Iterable[tuple[str, str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with wds.TarWriter(buf) as writer:
        for key, ext, data in members:
            writer.write({"__key__": key, ext: data})
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(data)


def write_token_root(
    root: str,
    n_shards: int = 3,
    per_shard: int = 24,
    n_crops: int = 2,
    vocab_a: int = 64,
    vocab_b: int = 48,
    grid: int = 4,
    seed: int = 0,
    invalid: dict[str, set[str]] | None = None,
    swap_keys_in: tuple[str, int] | None = None,
    ledger: bool = True,
    shard_name: str = "shard-{:06d}.tar",
    skip_ledger: dict[str, set[int]] | None = None,
) -> dict[int, list[str]]:
    """Write folders tok_a@N, tok_b@N, caption, crop_settings (+ ledger). Returns keys per shard.

    ``invalid[folder]`` keys get zero-byte members and are listed in the ledger;
    ``swap_keys_in=(folder, shard)`` swaps two keys' order in that folder's tar;
    ``skip_ledger[folder]`` shard indices get data but no ledger record (uncommitted).
    """
    rng = np.random.default_rng(seed)
    invalid = invalid or {}
    n_tokens = grid * grid
    res = grid * 8
    folders = [f"tok_a@{res}", f"tok_b@{res}", "caption", "crop_settings"]
    keys_by_shard: dict[int, list[str]] = {}
    for shard in range(n_shards):
        keys = [f"s{shard:03d}_{i:04d}" for i in range(per_shard)]
        keys_by_shard[shard] = keys
        rows: dict[str, list[tuple[str, str, bytes]]] = {f: [] for f in folders}
        for key in keys:
            _, tok_a, tok_b, caption = structured_sample(rng, n_crops, vocab_a, vocab_b, n_tokens)
            crops = np.array([[0, 0, 32, 32, 0]] + [[1, 2, 28, 28, int(rng.integers(2))]] * (n_crops - 1), dtype=np.int64)
            rows[f"tok_a@{res}"].append((key, "npy", _npy(tok_a)))
            rows[f"tok_b@{res}"].append((key, "npy", _npy(tok_b)))
            rows["caption"].append((key, "txt", caption.encode()))
            rows["crop_settings"].append((key, "npy", _npy(crops)))
        for folder in folders:
            members = [(k, e, b"" if k in invalid.get(folder, set()) else d) for k, e, d in rows[folder]]
            if swap_keys_in and swap_keys_in == (folder, shard):
                members[3], members[4] = members[4], members[3]
            data = _tar_bytes(members)
            _write(f"{root}/{folder}/{shard_name.format(shard)}", data)
            if ledger and shard not in (skip_ledger or {}).get(folder, set()):
                record = {
                    "folder": folder,
                    "shard": shard,
                    "n_samples": len(keys),
                    "keys_digest": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
                    "producer": {"name": folder, "kind": "tokenizer", "config_hash": "test", "code_version": "test"},
                    "producer_hash": "test",
                    "inputs": {},
                    "files": {f"{folder}/shard-{shard:06d}.tar": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}},
                    "invalid": sorted(k for k in keys if k in invalid.get(folder, set())),
                    "errors_by_reason": {},
                    "wall_s": 0.0,
                    "committed_at": "2026-11-23T18:00:00Z",
                }
                _write(f"{root}/_ledger/{folder}/shard-{shard:06d}.json", json.dumps(record).encode())
    return keys_by_shard


def token_modalities(grid: int = 4, vocab_a: int = 64, vocab_b: int = 48, text_vocab: int | None = None):
    """(modality names, registry overrides) matching write_token_root."""
    res = grid * 8
    names = [f"tok_a@{res}", f"tok_b@{res}", "caption"]
    overrides = {
        names[0]: {"type": "img", "vocab_size": vocab_a, "num_tokens": grid * grid},
        names[1]: {"type": "img", "vocab_size": vocab_b, "num_tokens": grid * grid},
        "caption": {"type": "seq", "vocab_size": text_vocab or 220, "num_tokens": 12},
    }
    return names, overrides
