"""The trainer's entry points: ``main(config_path)`` for ``prism4m train CONFIG``, ``train(config)``
(loop.py) and ``train_with_ray`` for Ray Train."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import fsspec

from .config import TrainConfig, config_from_dict, load_config, validate_config
from .loop import train

__all__ = ["config_from_dict", "load_config", "main", "required_baselines_met", "train", "train_with_ray"]


def required_baselines_met(cfg: TrainConfig, summary: Mapping[str, Any]) -> bool:
    """False when the config requires beating every baseline and a target modality missed."""
    return not cfg.require_beat_baseline or all(r["beats_baseline"] for r in summary.get("table") or [])


def main(config_path: str) -> int:
    """Entry point for ``prism4m train CONFIG`` (YAML, optionally under a ``train:`` key)."""
    cfg = load_config(config_path)
    return 0 if required_baselines_met(cfg, train(cfg)) else 1


# -- Ray Train ------------------------------------------------------------------------------
def _ray_train_loop(config: dict[str, Any]) -> None:
    import ray.train

    summary = train(config)
    metrics = {"step": summary["step"]}
    if summary["history"]:
        metrics["loss"] = summary["history"][-1]["loss"]
    for row in summary.get("table", []):
        metrics[f"val/{row['modality']}"] = row["val_loss"]
    ray.train.report(metrics)


def train_with_ray(config: TrainConfig | Mapping[str, Any], num_workers: int = 2, use_gpu: bool = False) -> dict[str, Any]:
    """Run `train` on ``num_workers`` Ray Train workers (one process group across nodes).

    Ray Train creates the torch process group; `train` joins it. Needs a running Ray
    cluster (``ray.init(address=...)``) or starts a local one.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = config if isinstance(config, TrainConfig) else validate_config(config)
    out = cfg.out_dir if "://" in cfg.out_dir else os.path.abspath(cfg.out_dir)
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=f"{out}/ray", name="train"),  # our checkpoints stay in out_dir
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    # Ray Train v2 keeps metrics only next to Ray checkpoints; ours live in out_dir, so
    # read the run's outcome back from rank 0's log there.
    summary: dict[str, Any] = dict(result.metrics or {})
    with fsspec.open(f"{cfg.out_dir.rstrip('/')}/log.jsonl", "r") as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    if steps:
        summary.update(step=steps[-1]["step"], loss=steps[-1]["loss"])
    finals = [r for r in records if r.get("event") == "final_eval"]
    if finals:
        summary["table"] = finals[-1]["table"]
    return summary
