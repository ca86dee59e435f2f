"""Where deep labelers get their weights, and what provenance says about them.

Every deep labeler takes `checkpoint:` in its config — a local directory/file or a hub id —
and resolves it here, so the rules are the same for all of them:

- no checkpoint, or a hub id that cannot be reached (offline, `HF_HUB_OFFLINE=1` and not
  cached) → MissingWeightsError at setup, before any shard, naming the config key and how
  to provide weights;
- a directory carrying the marker file RANDOM_WEIGHTS_MARKER was written by
  `save_random_weights_marker` (tests, smoke runs): provenance says `random_weights: true`,
  and status/report flag it. Nothing passes random weights off as real labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from prism4m.labelers.base import LabelerConfig, MissingWeightsError, library_versions

RANDOM_WEIGHTS_MARKER = "prism4m_random_weights.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


class DeepLabelerConfig(LabelerConfig):
    checkpoint: str | None = Field(
        None, description="local directory/file with the weights, or a hub id (needs network or cache)")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    requested: str          # what the config said
    path: Path              # local file or directory
    random_weights: bool    # marker present

    def provenance(self, *libraries: str) -> dict:
        return {
            "model_id": self.requested,
            "weights_sha256": weights_digest(self.path),
            "random_weights": self.random_weights,
            "libraries": library_versions(*libraries) if libraries else {},
        }


def missing_weights(labeler: str, example: str, detail: str = "") -> MissingWeightsError:
    msg = (f"labeler '{labeler}': no model weights available{': ' + detail if detail else ''}. "
           f"Set `labelers.{labeler}.checkpoint` (CLI: --config '{labeler}.checkpoint=…') to a local "
           f"directory or file with the weights, or to a hub id such as '{example}' on a machine "
           f"with network access (pre-download with `huggingface-cli download {example} --local-dir DIR` "
           f"for offline nodes).")
    return MissingWeightsError(msg)


def resolve_checkpoint(labeler: str, checkpoint: str | None, example: str) -> ResolvedCheckpoint:
    if not checkpoint:
        raise missing_weights(labeler, example, "checkpoint is not set")
    local = Path(os.path.expanduser(checkpoint))
    if local.exists():
        return ResolvedCheckpoint(checkpoint, local, is_random_weights(local))
    if checkpoint.startswith((".", "/", "~")) or os.sep in checkpoint.strip("/").split("/", 1)[-1]:
        raise missing_weights(labeler, example, f"path {checkpoint!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        path = Path(snapshot_download(checkpoint, local_files_only=offline))
    except Exception as exc:  # network down, not cached, no such repo: all mean "no weights"
        raise missing_weights(labeler, example, f"hub id {checkpoint!r} could not be loaded "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return ResolvedCheckpoint(checkpoint, path, is_random_weights(path))


def is_random_weights(path: Path) -> bool:
    """A weights directory, or the directory of a weights file, carries the random-weights marker."""
    return ((path if path.is_dir() else path.parent) / RANDOM_WEIGHTS_MARKER).exists()


def weights_digest(path: Path) -> str:
    """sha256 over the weight files of a checkpoint (names and bytes, in sorted order)."""
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path, nested: tuple[str, ...] = ()) -> dict:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt`` read with
    ``torch.load(weights_only=True)`` (tensors only, no code runs); a training checkpoint that
    keeps them under one of the ``nested`` keys is unwrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in nested:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def save_random_weights_marker(directory: str | os.PathLike, note: str = "") -> None:
    """Mark a saved model directory as random weights (tests, smoke runs)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"random_weights": True, "note": note}))
