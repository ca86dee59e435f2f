"""MLP tokenizer for global vectors (dinov2/clip CLS embeddings, body poses).

A bottleneck MLP maps the vector to ``n_tokens`` latents, each quantised by one shared
cosine codebook (quantizer.py), and a mirror MLP reconstructs the vector. ml-4m uses
Memcodes here; an EMA cosine codebook keeps one quantiser for every tokenizer type.
Tokens per sample: ``(n_tokens,)`` for every crop row (a global vector has no crop).
"""

from __future__ import annotations

import torch
from torch import nn

from prism4m.tokenizers.base import NeuralTokenizer
from prism4m.tokenizers.quantizer import CodebookModel, CosineCodebook


def mlp(d_in: int, width: int, d_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.GELU()]
    for _ in range(max(0, depth - 2)):
        layers += [nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()]
    layers += [nn.LayerNorm(width), nn.Linear(width, d_out)]
    return nn.Sequential(*layers)


class MLPModel(CodebookModel):
    def __init__(self, *, in_channels: int, n_tokens: int, width: int, depth: int, latent_dim: int,
                 codebook_size: int, ema_decay: float = 0.99, dead_fraction: float = 1 / 32,
                 standardize: bool = True):
        super().__init__()
        self.n_tokens, self.latent_dim = n_tokens, latent_dim
        if standardize:
            self.register_buffer("in_mean", torch.zeros(in_channels))
            self.register_buffer("in_std", torch.ones(in_channels))
        self.encoder = mlp(in_channels, width, n_tokens * latent_dim, depth)
        self.codebook = CosineCodebook(codebook_size, latent_dim, decay=ema_decay, dead_fraction=dead_fraction)
        self.decoder = mlp(n_tokens * latent_dim, width, in_channels, depth)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.float()).view(x.shape[0], self.n_tokens, self.latent_dim)

    def decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        return self.decoder(q.reshape(q.shape[0], -1))

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.codebook.lookup(ids.reshape(ids.shape[0], -1)))


class MLPTokenizer(NeuralTokenizer):
    type = "mlp"
    model_cls = MLPModel


def mlp_architecture(size: dict, channels: int, n_tokens: int, codebook_size: int) -> dict:
    return {"in_channels": channels, "n_tokens": n_tokens, "width": size["dim"] * 4,
            "depth": max(2, size["depth"]), "latent_dim": size["latent_dim"], "codebook_size": codebook_size}
