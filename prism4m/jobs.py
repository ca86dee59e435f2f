"""Job specs (`prism4m run JOB.yaml`): one YAML file describing a whole run, step by step.

```yaml
root: s3://bucket/datasets/cc12m-4m      # any fsspec URL
ray_address: auto                        # omit for a local Ray
ingest: {source: s3://bucket/raw/cc12m/, config: {shard_size: 1000, short_side: 512}}
label:
  modalities: [canny_edge, color_palette, metadata]
  labelers: {canny_edge: {blur_sigma: 1.0}}
  workers: null                          # default: as many as the cluster fits
```
Steps present in the file run in the order ingest → label → tokenizers → tokenize → train
(a `train:` section takes the trainer's config, see jobs/train-tiny.yaml). YAML is read with
safe_load only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism4m.errors import UserError, describe_validation_error, describe_yaml_error


class IngestStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    config: dict[str, Any] = Field(default_factory=dict)
    workers: int | None = None
    force: bool = False


class LabelStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modalities: list[str]
    labelers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    workers: int | None = None
    force: bool = False
    update_stale: bool = False


class TokenizerStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    out: str
    config: dict[str, Any] = Field(default_factory=dict)


class TokenizeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizers: list[str] | None = None   # default: every tokenizer trained in this job (not text)
    workers: int | None = None
    force: bool = False
    compression: Literal["gzip", "none"] = "gzip"  # token shards: gzip'd tar (same .tar name) or plain


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt step would otherwise be skipped silently
    root: str
    ray_address: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    ingest: IngestStep | None = None
    label: LabelStep | None = None
    tokenizers: list[TokenizerStep] = Field(default_factory=list)
    tokenize: TokenizeStep | None = None
    train: dict[str, Any] | None = None  # the trainer's config (prism4m.trainer validates it)
    base_dir: str = "."  # the job file's folder (relative paths in later steps resolve against it)


def _local(base: Path, p: str) -> str:
    return p if "://" in p or Path(p).is_absolute() else str((base / p).resolve())


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job file; a YAML or schema mistake is a UserError naming the file and key."""
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(describe_yaml_error(exc, str(path))) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a job spec is a YAML mapping (root: …, ingest: …, label: …)")
    base = Path(path).resolve().parent
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: {describe_validation_error(exc, '')}") from None
    spec.base_dir = str(base)
    # Relative local paths in a job file are relative to the file, not to the shell's cwd.
    if "://" not in spec.root and not Path(spec.root).is_absolute():
        spec.root = str((base / spec.root).resolve())
    if spec.ingest:
        spec.ingest.source = _local(base, spec.ingest.source)
    for t in spec.tokenizers:
        t.out = _local(base, t.out)
    if spec.tokenize and spec.tokenize.tokenizers:
        spec.tokenize.tokenizers = [_local(base, p) for p in spec.tokenize.tokenizers]
    return spec


def run_extra_steps(spec: JobSpec, show_progress: bool = True) -> bool:
    """Steps after labelling: tokenizer training, then tokenize."""
    from prism4m.api import describe_tokenize, describe_tokenizer  # the lines the commands print

    ok = True
    if spec.tokenizers:
        from prism4m.pipeline.tokenizer_training import train_tokenizer

        for step in spec.tokenizers:
            card = train_tokenizer(spec.root, step.modality, step.out, step.config, progress=show_progress,
                                   storage_options=spec.storage_options or None)
            print("\n".join(describe_tokenizer(card, step.out)))
    if spec.tokenize:
        from prism4m.pipeline.tokenize import tokenize

        dirs = spec.tokenize.tokenizers or [t.out for t in spec.tokenizers if t.modality != "text"]
        s = tokenize(spec.root, dirs, workers=spec.tokenize.workers, force=spec.tokenize.force,
                     ray_address=spec.ray_address, storage_options=spec.storage_options or None,
                     show_progress=show_progress, compression=spec.tokenize.compression)
        print("\n".join(describe_tokenize(s)))
        ok &= s.ok
    if spec.train:
        from prism4m.trainer.train import config_from_dict, required_baselines_met, train

        cfg = config_from_dict(spec.train, spec.base_dir, spec.root)
        summary = train(cfg)
        ok &= required_baselines_met(cfg, summary)
    return ok
