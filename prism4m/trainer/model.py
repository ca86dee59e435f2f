"""The 4M encoder-decoder (4M_FORMAT.md §5.2), written for prism4m.

- pre-norm Transformer blocks, LayerNorm without bias (eps 1e-6), no biases anywhere,
  SwiGLU MLPs with hidden size int(2 * 4D / 3);
- every modality has its own token embedding for the encoder and for the decoder; one
  modality embedding per modality is shared by both; positions are fixed 2-D sin-cos for
  image grids, 1-D sin-cos for sequences, learned for global token vectors;
- the encoder sees the selected input tokens of every modality; the decoder holds one slot
  per target token: image targets are a learned mask token plus position, sequence targets
  use teacher forcing; decoder self-attention stays inside one modality (bidirectional for
  images, causal for sequences) and cross-attends to the projected encoder output plus the
  encoder's position/modality embeddings;
- loss: cross-entropy per target modality (mean over its target tokens), then the mean
  over the modalities that have targets in the batch. Output heads are tied to the
  decoder token embeddings.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .modalities import TrainModality

# name: (encoder depth, decoder depth, width, heads)
MODEL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "micro": (2, 2, 64, 4),  # for tests: a few seconds of CPU training
    "tiny": (6, 6, 384, 6),
    "small": (8, 8, 512, 8),
    "base": (12, 12, 768, 12),
    "large": (24, 24, 1024, 16),
    "xlarge": (24, 24, 2048, 32),
}


def sincos_1d(n: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(n, dim) fixed positions: half sines, half cosines."""
    omega = 1.0 / temperature ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(h*w, dim) fixed positions, row-major over the grid; half the channels per axis."""
    if dim % 4:
        raise ValueError("2-D sin-cos positions need a width divisible by 4")
    rows = sincos_1d(h, dim // 2, temperature)  # (h, dim/2)
    cols = sincos_1d(w, dim // 2, temperature)  # (w, dim/2)
    grid = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    return grid.reshape(h * w, dim)


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, bias=False)


class SwiGLU(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        self.gate_and_value = nn.Linear(dim, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.gate_and_value(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * value)


class Attention(nn.Module):
    """Multi-head attention; ``context=None`` is self-attention. Mask: True = may attend."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_attn, self.attn = _norm(dim), Attention(dim, heads)
        self.norm_mlp, self.mlp = _norm(dim), SwiGLU(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), mask)
        return x + self.mlp(self.norm_mlp(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_self, self.self_attn = _norm(dim), Attention(dim, heads)
        self.norm_cross, self.cross_attn = _norm(dim), Attention(dim, heads)
        self.norm_mlp, self.mlp = _norm(dim), SwiGLU(dim)

    def forward(self, x, self_mask, context, cross_mask):
        x = x + self.self_attn(self.norm_self(x), self_mask)
        x = x + self.cross_attn(self.norm_cross(x), cross_mask, context)
        return x + self.mlp(self.norm_mlp(x))


def _key(name: str) -> str:
    return name.replace(".", "_")  # ModuleDict keys cannot contain dots


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i]] for (B, T, ...) x and (B, K) index."""
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def _select(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True slots first (stable) cut to the longest row, and their validity."""
    width = max(int(mask.sum(1).max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    return order, torch.gather(mask, 1, order)


class FourM(nn.Module):
    def __init__(self, registry: Mapping[str, TrainModality], size: str = "tiny", **overrides: int) -> None:
        super().__init__()
        enc_depth, dec_depth, dim, heads = MODEL_SIZES[size]
        enc_depth = overrides.get("encoder_depth", enc_depth)
        dec_depth = overrides.get("decoder_depth", dec_depth)
        dim = overrides.get("dim", dim)
        heads = overrides.get("heads", heads)
        self.registry = dict(registry)
        self.names = list(self.registry)
        self.dim = dim
        self.enc_token_emb = nn.ModuleDict({_key(m): nn.Embedding(s.vocab_size, dim) for m, s in self.registry.items()})
        self.dec_token_emb = nn.ModuleDict({_key(m): nn.Embedding(s.vocab_size, dim) for m, s in self.registry.items()})
        self.mod_emb = nn.ParameterDict({_key(m): nn.Parameter(torch.zeros(dim)) for m in self.names})
        self.learned_pos = nn.ParameterDict()
        for m, spec in self.registry.items():
            if spec.type == "img":
                self.register_buffer(f"pos_{_key(m)}", sincos_2d(*spec.grid, dim), persistent=False)
            elif spec.type == "seq":
                self.register_buffer(f"pos_{_key(m)}", sincos_1d(spec.max_length, dim), persistent=False)
            else:
                self.learned_pos[_key(m)] = nn.Parameter(torch.zeros(spec.num_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.encoder = nn.ModuleList([EncoderBlock(dim, heads) for _ in range(enc_depth)])
        self.encoder_norm = _norm(dim)
        self.context_proj = nn.Linear(dim, dim, bias=False)
        self.decoder = nn.ModuleList([DecoderBlock(dim, heads) for _ in range(dec_depth)])
        self.decoder_norm = _norm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for p in [*self.mod_emb.values(), *self.learned_pos.values(), self.mask_token]:
            nn.init.normal_(p, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _pos(self, name: str, n: int) -> torch.Tensor:
        key = _key(name)
        if key in self.learned_pos:
            return self.learned_pos[key][:n]
        return getattr(self, f"pos_{key}")[:n]

    def forward(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (loss, {modality: mean CE over its targets}); modalities without targets
        in the batch are left out of both."""
        enc_x, enc_posmod, enc_valid = [], [], []
        dec_x, dec_valid, dec_mod, dec_pos, dec_causal, dec_labels = [], [], [], [], [], []
        for i, name in enumerate(self.names):
            spec, key, data = self.registry[name], _key(name), batch[name]
            n = data["enc_ids"].shape[1]
            posmod = self._pos(name, n) + self.mod_emb[key]
            enc_x.append(self.enc_token_emb[key](data["enc_ids"]) + posmod)
            enc_posmod.append(posmod.expand(data["enc_ids"].shape[0], -1, -1))
            enc_valid.append(data["input_mask"])
            if spec.is_sequence:
                dec_x.append(self.dec_token_emb[key](data["dec_ids"]) + posmod)
            else:
                dec_x.append((self.mask_token + posmod).expand(data["dec_ids"].shape[0], -1, -1))
            dec_valid.append(data["target_mask"])
            dec_labels.append(data["labels"])
            positions = torch.arange(n, device=data["labels"].device).expand_as(data["labels"])
            dec_pos.append(positions)
            dec_mod.append(torch.full_like(data["labels"], i))
            dec_causal.append(torch.full_like(data["target_mask"], spec.is_sequence))

        # Encoder over the selected input tokens only.
        order, valid = _select(torch.cat(enc_valid, 1))
        x = _gather(torch.cat(enc_x, 1), order)
        posmod = _gather(torch.cat(enc_posmod, 1), order)
        key_ok = valid.clone()
        key_ok[:, 0] = True  # a sample with no input still needs one key to attend to
        enc_mask = key_ok[:, None, :].expand(-1, x.shape[1], -1)
        for block in self.encoder:
            x = block(x, enc_mask)
        context = self.context_proj(self.encoder_norm(x)) + posmod

        # Decoder over the target slots.
        order, valid = _select(torch.cat(dec_valid, 1))
        y = _gather(torch.cat(dec_x, 1), order)
        mod = _gather(torch.cat(dec_mod, 1), order)
        pos = _gather(torch.cat(dec_pos, 1), order)
        causal = _gather(torch.cat(dec_causal, 1), order)
        labels = _gather(torch.cat(dec_labels, 1), order)
        same_mod = mod[:, :, None] == mod[:, None, :]
        allowed_pos = ~causal[:, :, None] | (pos[:, None, :] <= pos[:, :, None])
        self_mask = same_mod & allowed_pos & valid[:, None, :]
        self_mask |= torch.eye(y.shape[1], dtype=torch.bool, device=y.device)  # no empty rows
        cross_mask = key_ok[:, None, :].expand(-1, y.shape[1], -1)
        for block in self.decoder:
            y = block(y, self_mask, context, cross_mask)
        y = self.decoder_norm(y)

        losses: dict[str, torch.Tensor] = {}
        # Every head joins the graph (even with no targets) so DDP sees all parameters used.
        tie = y.new_zeros(())
        for i, name in enumerate(self.names):
            selected = valid & (mod == i)
            logits = y[selected] @ self.dec_token_emb[_key(name)].weight.T
            tie = tie + 0.0 * logits.sum()
            if logits.shape[0]:
                losses[name] = F.cross_entropy(logits.float(), labels[selected])
        if not losses:
            return tie, losses
        loss = torch.stack(list(losses.values())).mean() + tie
        return loss, losses
