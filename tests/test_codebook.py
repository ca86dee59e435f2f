"""The cosine codebook recovers from a collapsed start within a short run."""

import torch
import torch.nn.functional as F

from prism4m.tokenizers.quantizer import CosineCodebook


def _codes_in_use_after(patience: int) -> int:
    torch.manual_seed(0)
    cb = CosineCodebook(64, 8, dead_patience=patience)
    cb.train()
    cb(F.normalize(torch.ones(256, 8), dim=-1))  # data init from a collapsed encoder: one direction
    diverse = torch.randn(256, 8)
    for _ in range(12):
        cb(diverse)
    return len(cb.assign(diverse).unique())


def test_unused_codes_are_reseeded_within_a_short_run():
    assert _codes_in_use_after(patience=5) > 48
    # with only the EMA threshold (ml-4m's rule) the same run stays collapsed
    assert _codes_in_use_after(patience=10**9) < 16
