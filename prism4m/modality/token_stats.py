"""How a set of token ids uses its codebook: one definition for tokenizer cards and the report.

numpy only, so `prism4m report` needs no torch for it.
"""

from __future__ import annotations

import numpy as np


def codebook_usage(ids, vocab_size: int | None) -> dict:
    """Codes used, their share of the vocabulary, perplexity (exp of the code entropy), the most
    frequent ids, and ids outside the vocabulary (a tokenizer/folder mismatch)."""
    ids = np.asarray(ids).astype(np.int64).ravel()
    counts = np.bincount(ids[ids >= 0], minlength=vocab_size or 0)
    p = counts[counts > 0] / max(counts.sum(), 1)
    used = int((counts > 0).sum())
    out = {"vocab_size": vocab_size, "tokens_seen": int(ids.size), "codes_used": used,
           "perplexity": float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0,
           "top_ids": [int(i) for i in np.argsort(-counts, kind="stable")[:8]]}
    if vocab_size:
        out["usage"] = used / vocab_size
        out["out_of_range"] = int((ids >= vocab_size).sum() + (ids < 0).sum())
    return out
