"""VQ-VAE tokenizer for image-like modalities: ViT encoder → cosine codebook → ViT decoder.

The encoder cuts its input into patches (16 rgb pixels, or one cell of a clip/dinov2
feature map whose cells already are 16 / 14 pixel patches), runs pre-norm transformer
blocks with fixed 2D sin-cos positions, and projects each token to a small latent that the
cosine codebook (quantizer.py) maps to an id. The decoder mirrors it and predicts every
patch's pixels (class logits for class maps; mask logits for binary masks, which
``decode_ids`` turns into probabilities). Sizes range from "tiny" (tests, demo) to
"base" (ViT-B, as ml-4m's tokenizers); see base.SIZES.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prism4m.tokenizers.base import NeuralTokenizer
from prism4m.tokenizers.quantizer import CodebookModel, CosineCodebook


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed (h*w, dim) positions: half the channels encode the row, half the column."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out_y = ys.reshape(-1, 1) * omega[None]
    out_x = xs.reshape(-1, 1) * omega[None]
    pe = torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)
    return F.pad(pe, (0, dim - pe.shape[1]))


def transformer(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class VQModel(CodebookModel):
    def __init__(self, *, in_channels: int, out_channels: int, patch: int, grid: int, dim: int, depth: int,
                 heads: int, dec_dim: int, dec_depth: int, latent_dim: int, codebook_size: int,
                 num_classes: int = 0, class_emb_dim: int = 32, ema_decay: float = 0.99,
                 dead_fraction: float = 1 / 32, standardize: bool = False, binary: bool = False):
        super().__init__()
        self.patch, self.grid, self.num_classes, self.out_channels = patch, grid, num_classes, out_channels
        self.binary = binary  # outputs are logits of a 0/1 mask (trained with binary cross-entropy)
        if num_classes:
            self.class_emb = nn.Embedding(num_classes, class_emb_dim)
            in_channels = class_emb_dim
        if standardize:  # per-channel statistics of the training data (features)
            self.register_buffer("in_mean", torch.zeros(in_channels))
            self.register_buffer("in_std", torch.ones(in_channels))
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.encoder = transformer(dim, depth, heads)
        self.enc_norm = nn.LayerNorm(dim)
        self.to_latent = nn.Linear(dim, latent_dim)
        self.codebook = CosineCodebook(codebook_size, latent_dim, decay=ema_decay, dead_fraction=dead_fraction)
        self.from_latent = nn.Linear(latent_dim, dec_dim)
        self.decoder = transformer(dec_dim, dec_depth, max(1, heads * dec_dim // dim))
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.to_patch = nn.Linear(dec_dim, patch * patch * (num_classes or out_channels))
        self.register_buffer("enc_pos", sincos_2d(grid, grid, dim), persistent=False)
        self.register_buffer("dec_pos", sincos_2d(grid, grid, dec_dim), persistent=False)

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes:
            x = self.class_emb(x.long()).permute(0, 3, 1, 2)
        t = self.patch_embed(x.float()).flatten(2).transpose(1, 2) + self.enc_pos
        return self.to_latent(self.enc_norm(self.encoder(t)))

    def decode_latent(self, q: torch.Tensor) -> torch.Tensor:
        t = self.decoder(self.from_latent(q) + self.dec_pos)
        p = self.to_patch(self.dec_norm(t))  # (B, g*g, p*p*C)
        b, g, c = p.shape[0], self.grid, self.num_classes or self.out_channels
        p = p.view(b, g, g, self.patch, self.patch, c).permute(0, 5, 1, 3, 2, 4)
        return p.reshape(b, c, g * self.patch, g * self.patch)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.decode_latent(self.codebook.lookup(ids.reshape(ids.shape[0], -1)))
        if self.num_classes:
            return out.argmax(dim=1)
        return torch.sigmoid(out) if self.binary else out


class VQTokenizer(NeuralTokenizer):
    type = "vq"
    model_cls = VQModel


def vq_architecture(spec, input_size: int, size: dict, codebook_size: int, channels: int) -> dict:
    """Model kwargs for a modality: patch in encoder-input cells, grid of tokens per side.

    ``input_size``: side of the encoder input (instance masks: the mask side, not the crop's)."""
    grid = input_size // spec.patch_size
    if grid * spec.patch_size != input_size:
        raise ValueError(f"input_size {input_size} is not a multiple of the patch size {spec.patch_size}")
    patch = 1 if spec.kind == "feature" else spec.patch_size
    heads = size["heads"]
    if size["dim"] % heads:
        heads = math.gcd(size["dim"], heads)
    return {
        "in_channels": channels, "out_channels": channels, "patch": patch, "grid": grid,
        "dim": size["dim"], "depth": size["depth"], "heads": heads, "dec_dim": size["dec_dim"],
        "dec_depth": size["dec_depth"], "latent_dim": size["latent_dim"], "codebook_size": codebook_size,
        "num_classes": spec.num_classes, "standardize": spec.normalise == "standardize",
        **({"binary": True} if spec.loss == "bce" else {}),
    }
