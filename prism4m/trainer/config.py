"""The trainer's config: ``TrainConfig`` and its sections, read from YAML or a job spec's ``train:``."""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism4m.errors import UserError, describe_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    root: str
    modalities: list[str]
    layout: Literal["auto", "prism4m", "ml4m", "parquet"] = "auto"
    text_tokenizer: str | None = None  # tokenizer.json (ml-4m WordPiece layout) for seq modalities
    eval_shards: list[int] = Field(default_factory=list)  # held out from training
    eval_root: str | None = None  # or a separate root (all of it is evaluation data)
    batch_size: int = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    random_crop: bool = True
    eval_max_batches: int | None = None
    baseline_max_samples: int | None = 20000


class MaskingConfig(_Strict):
    num_input_tokens: int = 128
    num_target_tokens: int = 128
    min_input_tokens: int | None = None
    min_target_tokens: int | None = None
    mixture: Literal["4m7", "4m21", "all2all"] = "4m7"
    # Custom mixture instead: [{input_alphas: {mod: a}, target_alphas: {...}, keep: {...}, weight: w}]
    components: list[dict[str, Any]] | None = None


class ModelConfig(_Strict):
    size: str = "tiny"
    dim: int | None = None
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    heads: int | None = None


class OptimConfig(_Strict):
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = 1.0


class TrainConfig(_Strict):
    data: DataConfig
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    modality_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    steps: int = 1000
    seed: int = 0
    out_dir: str = "runs/4m"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate once at the end
    checkpoint_every: int = 0  # 0: only the final checkpoint
    resume: bool = True  # continue from out_dir/checkpoints/latest.pt when it exists
    resume_from: str | None = None  # or from this checkpoint file
    device: str = "auto"
    torch_threads: int | None = None
    print_table: bool = True
    require_beat_baseline: bool = False  # main() exits 1 when a modality misses its baseline
    # The bar for "beats": the unigram entropy of the training shards (default), or that
    # training unigram's cross-entropy on the validation tokens (fairer on tiny datasets,
    # where validation uses token ids the training shards barely contain).
    baseline: Literal["train_entropy", "train_unigram_ce_on_val"] = "train_entropy"


def validate_config(raw: Mapping[str, Any], where: str = "train config") -> TrainConfig:
    """A TrainConfig, or a UserError naming the bad key in prism4m's words
    (``where: key.path: what was wrong``)."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{where}: {describe_validation_error(exc, '')}") from None


def _relative_to(base: str, value: str | None) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def config_from_dict(raw: Mapping[str, Any], base_dir: str | None = None, default_root: str | None = None,
                     where: str = "train config") -> TrainConfig:
    """A TrainConfig from a mapping such as a job spec's ``train:`` section.

    Relative local paths (data.root, data.eval_root, data.text_tokenizer, out_dir,
    resume_from) are resolved against ``base_dir``; ``default_root`` fills a missing
    data.root (a job spec's dataset root).
    """
    raw = dict(raw)
    data = dict(raw.get("data", {}))
    if default_root is not None:
        data.setdefault("root", default_root)
    if base_dir is not None:
        for key in ("root", "eval_root", "text_tokenizer"):
            if data.get(key) is not None:
                data[key] = _relative_to(base_dir, data[key])
        for key in ("out_dir", "resume_from"):
            if raw.get(key):
                raw[key] = _relative_to(base_dir, raw[key])
    raw["data"] = data
    return validate_config(raw, where)


def load_config(path: str) -> TrainConfig:
    """Read a YAML config: a TrainConfig, or a job spec with a ``train:`` section (whose
    top-level ``root`` is the default dataset). Relative paths are relative to the file."""
    with fsspec.open(path, "r") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("train", raw), dict):
        raise UserError(f"{path}: expected a YAML mapping (a trainer config, or a job spec with a train: section)")
    section = raw.get("train", raw)
    default_root = raw.get("root") if "train" in raw else None
    base_dir = None if "://" in path else os.path.dirname(os.path.abspath(path))
    return config_from_dict(section, base_dir, default_root, f"{path}{' (train:)' if 'train' in raw else ''}")
