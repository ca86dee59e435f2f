"""Cosine-similarity codebook with EMA updates and dead-code replacement.

Vectors and codes live on the unit sphere; a vector's code is the one with the highest
cosine similarity. Codes are not trained by gradient: each step moves a code towards the
(EMA) mean direction of the vectors assigned to it. A code whose EMA assignment count falls
below ``dead_fraction`` of the average count (ml-4m uses 1/32) is re-seeded with a random
vector of the current batch, so the codebook does not collapse onto a few codes. The
encoder gets the straight-through gradient plus a commitment loss pulling it to its codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineCodebook(nn.Module):
    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, dead_fraction: float = 1 / 32,
                 dead_patience: int = 25):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.dead_fraction = num_codes, dim, decay, dead_fraction
        # The EMA count of an unused code takes ~340 steps (decay 0.99) to fall below ml-4m's
        # threshold: a short run would collapse first. A code unused for `dead_patience` steps
        # in a row is dead too.
        self.dead_patience = dead_patience
        g = torch.Generator().manual_seed(0)
        embed = F.normalize(torch.randn(num_codes, dim, generator=g), dim=-1)
        self.register_buffer("embed", embed)
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids of ``z`` (..., dim)."""
        flat = F.normalize(z.reshape(-1, self.dim), dim=-1)
        return (flat @ self.embed.t()).argmax(dim=-1).view(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (..., dim) → (quantised with straight-through grads, ids, commitment loss)."""
        flat = F.normalize(z.reshape(-1, self.dim), dim=-1)
        if self.training:
            self._maybe_init(flat.detach())
        ids = (flat @ self.embed.t()).argmax(dim=-1)
        q = self.lookup(ids)
        if self.training:
            self._ema_update(flat.detach(), ids)
        commit = F.mse_loss(flat, q.detach())
        q_st = flat + (q - flat).detach()
        return q_st.view(*z.shape[:-1], self.dim), ids.view(z.shape[:-1]), commit

    @torch.no_grad()
    def _maybe_init(self, flat: torch.Tensor) -> None:
        # Seed codes with data vectors: random codes on a high-dim sphere are rarely nearest.
        if bool(self.initted):
            return
        pick = torch.randint(0, flat.shape[0], (self.num_codes,), device=flat.device)
        self.embed.copy_(flat[pick])
        expected = flat.shape[0] / self.num_codes
        self.cluster_size.fill_(expected)
        self.embed_sum.copy_(self.embed * expected)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.num_codes).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.embed.copy_(F.normalize(self.embed_sum, dim=-1))
        expected = flat.shape[0] / self.num_codes
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.cluster_size < self.dead_fraction * expected) | (self.steps_unused >= self.dead_patience)
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            self.embed[dead] = flat[pick]
            self.embed_sum[dead] = flat[pick] * expected
            self.cluster_size[dead] = expected
            self.steps_unused[dead] = 0


class CodebookModel(nn.Module):
    """encoder → codebook → decoder; subclasses define encode_latent, decode_latent, codebook."""

    codebook: CosineCodebook

    def forward(self, x: torch.Tensor):
        q, ids, commit = self.codebook(self.encode_latent(x))
        return self.decode_latent(q), ids, commit

    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        return self.codebook.assign(self.encode_latent(x))
