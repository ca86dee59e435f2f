"""Where a run computes: its rank in torchrun's or Ray Train's process group, its device."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this process created the group (so it destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join torchrun's (env://) or Ray Train's process group when there is one."""
    owns = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world > 1:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if device != "auto":
        chosen = torch.device(device)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    return Dist(rank, world, chosen, owns)


def to_device(batch, device: torch.device):
    return {m: {k: v.to(device, non_blocking=True) for k, v in d.items()} for m, d in batch.items()}


def autocast(device: torch.device):
    # bf16 autocast on CUDA only; CPU bf16 is slow and changes test numerics.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
