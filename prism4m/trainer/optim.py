"""AdamW with decay on matrix weights only, and a warmup-then-cosine learning rate."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only matrix weights of linear layers: not norms, embeddings or positions."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = "token_emb" in name or "mod_emb" in name or "learned_pos" in name or "mask_token" in name
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, o: OptimConfig, total_steps: int):
    """(optimizer, scheduler) for ``total_steps`` steps."""
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    min_ratio = o.min_lr / o.lr if o.lr else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, o.warmup_steps, total_steps, min_ratio)
    )
    return optimizer, scheduler
