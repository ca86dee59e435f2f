"""Checkpoints: model, optimizer, scheduler, every rank's RNG states and loader position.

A run resumes from its newest checkpoint (``OUT/checkpoints/latest.pt``) or a named one
exactly: the next step sees the batch and draws the random numbers it would have seen.
Checkpoints hold only tensors, ints and tuples, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from typing import Any, Mapping

import fsspec
import numpy as np
import torch
import torch.distributed as dist

from prism4m.errors import UserError, one_line

from .data import TokenLoader
from .distributed import Dist


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **state: Any) -> None:
    """Write to a temporary name, then move: a killed run never leaves a half checkpoint."""
    fs, p = fsspec.core.url_to_fs(path)
    fs.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.tmp"
    with fs.open(tmp, "wb") as f:
        torch.save(state, f)
    fs.mv(tmp, p)


def load_checkpoint(path: str) -> dict[str, Any]:
    with fsspec.open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _exists(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


#: the settings that shape the model: a checkpoint made under others cannot be resumed
MODEL_SETTINGS = (("data", "modalities"), ("model", None), ("modality_overrides", None))


def _model_changes(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    if not saved:
        return ""
    changed = []
    for section, key in MODEL_SETTINGS:
        old, new = saved.get(section, {}), current.get(section, {})
        if key is not None:
            old, new = old.get(key), new.get(key)
        if old != new:
            name = f"{section}.{key}" if key else section
            changed.append(f"{name} was {old} and is {new}" if key else f"{name} changed")
    return "; ".join(changed) + ": " if changed else ""


class Checkpoints:
    """Saves and restores one run's training state under ``out_dir/checkpoints``."""

    def __init__(self, out_dir: str, ctx: Dist, model: torch.nn.Module, optimizer, scheduler,
                 loader: TokenLoader, config: Mapping[str, Any]) -> None:
        self.dir = f"{out_dir.rstrip('/')}/checkpoints"
        self.latest = f"{self.dir}/latest.pt"
        self.ctx, self.model, self.optimizer, self.scheduler, self.loader = ctx, model, optimizer, scheduler, loader
        self.config = dict(config)

    def to_resume(self, resume: bool, resume_from: str | None) -> str | None:
        """``resume_from``, else the newest checkpoint when ``resume`` and there is one."""
        return resume_from or (self.latest if resume and _exists(self.latest) else None)

    def load(self, path: str) -> int:
        """Restore the state saved at ``path``; returns its step."""
        state = load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:  # another model: say which settings made it so, in one line
            raise UserError(f"{path}: a checkpoint of another model ({_model_changes(state.get('config'), self.config)}"
                            f"{one_line(str(exc))[:300]}); give this run a new out_dir, or set resume: false to start "
                            f"it over here") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        loader = state["loader"]
        self.loader.load_state_dict(loader[self.ctx.rank] if isinstance(loader, list) else loader)
        set_rng_state(state["rng"][min(self.ctx.rank, len(state["rng"]) - 1)])
        return int(state["step"])

    def save(self, step: int) -> None:
        """``step-N.pt`` and ``latest.pt``. Loader positions and RNG states differ per rank:
        gathered so that any rank resumes."""
        loaders, rngs = [self.loader.state_dict()], [rng_state()]
        if self.ctx.world > 1:
            loaders, rngs = [None] * self.ctx.world, [None] * self.ctx.world
            dist.all_gather_object(loaders, self.loader.state_dict())
            dist.all_gather_object(rngs, rng_state())
        if self.ctx.is_main:
            state = dict(
                step=step, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(), loader=loaders, rng=rngs, config=self.config,
            )
            save_checkpoint(f"{self.dir}/step-{step:08d}.pt", **state)
            save_checkpoint(self.latest, **state)
        if self.ctx.world > 1:
            dist.barrier()
