"""Generated token datasets for the trainer tests and benchmark.

Writes a prism4m root through the store's own commit path (``DatasetStore.commit_unit``):
per-folder tars (one member per sample, same keys in the same order), then the ledger
record last. The tokens are *structured* so that a model can beat the unigram
baseline: each sample has a hidden class; ``tok_a`` draws its tokens from a small
class-specific set, ``tok_b`` is a fixed function of ``tok_a`` at the same position, and
the caption names the class.
"""

from __future__ import annotations

import fsspec
import numpy as np

from prism4m.contract.members import encode_npy
from prism4m.contract.store import DatasetStore, Member, build_tar
from prism4m.tokenizers.text import special_tokens

CLASS_WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
OTHER_WORDS = ["a", "photo", "of", "thing", "the", "small", "big", "picture"]


def make_text_tokenizer():
    """A tiny WordPiece tokenizer with ml-4m's special-token layout."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = special_tokens() + CLASS_WORDS + OTHER_WORDS
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(special_tokens())
    return tok


def structured_sample(rng: np.random.Generator, n_crops: int, vocab_a: int, vocab_b: int, n_tokens: int, n_classes: int = 8):
    cls = int(rng.integers(n_classes))
    per_class = vocab_a // n_classes
    tok_a = cls * per_class + rng.integers(0, 4, size=(n_crops, n_tokens))
    tok_b = (tok_a * 7 + 3) % vocab_b
    size = OTHER_WORDS[6 + int(rng.integers(2))]  # one unpredictable word: "small" / "big"
    caption = f"a {size} photo of {CLASS_WORDS[cls % len(CLASS_WORDS)]}"
    return cls, tok_a.astype(np.int16), tok_b.astype(np.int16), caption


PRODUCER = {"kind": "tokenizer", "config_hash": "test", "code_version": "test"}


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

    Shards are committed with the store's own ``commit_unit`` (tars, then ledger records).
    ``invalid[folder]`` keys get zero-byte members (the store lists them in the ledger);
    ``swap_keys_in=(folder, shard)`` swaps two keys' order in that folder's tar.
    Breaking the contract on purpose: ``skip_ledger[folder]`` shard indices get a tar but no
    ledger record (uncommitted); ``ledger=False`` writes an ml-4m-layout root (tars named by
    ``shard_name``, no ledger).
    """
    rng = np.random.default_rng(seed)
    invalid = invalid or {}
    n_tokens = grid * grid
    res = grid * 8
    folders = [f"tok_a@{res}", f"tok_b@{res}", "caption", "crop_settings"]
    store = DatasetStore(root)
    keys_by_shard: dict[int, list[str]] = {}
    for shard in range(n_shards):
        keys = [f"s{shard:03d}_{i:04d}" for i in range(per_shard)]
        keys_by_shard[shard] = keys
        rows: dict[str, list[Member]] = {f: [] for f in folders}
        for key in keys:
            _, tok_a, tok_b, caption = structured_sample(rng, n_crops, vocab_a, vocab_b, n_tokens)
            crops = np.array([[0, 0, 32, 32, 0]] + [[1, 2, 28, 28, int(rng.integers(2))]] * (n_crops - 1), dtype=np.int64)
            rows[f"tok_a@{res}"].append(Member(key, "npy", encode_npy(tok_a)))
            rows[f"tok_b@{res}"].append(Member(key, "npy", encode_npy(tok_b)))
            rows["caption"].append(Member(key, "txt", caption.encode()))
            rows["crop_settings"].append(Member(key, "npy", encode_npy(crops)))
        outputs: dict[str, list[Member]] = {}
        for folder in folders:
            members = [Member(m.key, m.ext, b"") if m.key in invalid.get(folder, set()) else m for m in rows[folder]]
            if swap_keys_in and swap_keys_in == (folder, shard):
                members[3], members[4] = members[4], members[3]
            if ledger and shard not in (skip_ledger or {}).get(folder, set()):
                outputs[folder] = members
            else:  # a tar no ledger record makes visible
                with fsspec.open(f"{root}/{folder}/{shard_name.format(shard)}", "wb") as f:
                    f.write(build_tar(members))
        if outputs:
            store.commit_unit(shard, outputs, {f: {"producer": {"name": f, **PRODUCER}, "inputs": {}} for f in outputs})
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
