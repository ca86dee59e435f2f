"""Job specs (`prism4m run JOB.yaml`) and the one runner of their steps.

```yaml
root: s3://bucket/datasets/cc12m-4m      # any fsspec URL
ray_address: auto                        # omit for a local Ray
ingest: {source: s3://bucket/raw/cc12m/, config: {shard_size: 1000, short_side: 512}}
label:
  modalities: [canny_edge, color_palette, metadata]
  labelers: {canny_edge: {blur_sigma: 1.0}}
  workers: null                          # default: as many as the cluster fits
```
Steps present in the file run in the order ingest → label → tokenizers → tokenize → train; each
is a small function from its section to the lines the matching command prints (prism4m.describe).
A `train:` section is the trainer's config (see jobs/train-tiny.yaml); its data.root defaults to
the job's root. Relative local paths are relative to the job file. YAML is read with safe_load only.
The job's keys, the ingest settings and the train: section are checked when the file is loaded;
labeler and tokenizer settings by their stage, before it does any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prism4m.describe import (describe_ingest, describe_label, describe_status, describe_tokenize,
                              describe_tokenizer)
from prism4m.errors import UserError, describe_validation_error, describe_yaml_error, refuse_file_root
from prism4m.pipeline.ingest_settings import IngestConfig
from prism4m.trainer.config import TrainConfig, config_from_dict


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key would otherwise be ignored silently


class IngestStep(_Step):
    source: str
    config: IngestConfig = Field(default_factory=IngestConfig)  # only the settings given count (ingest_settings)
    workers: int | None = None
    force: bool = False

    @field_validator("config", mode="before")
    @classmethod
    def _null_is_the_roots_own(cls, v: Any) -> Any:
        """A setting given as null is left to the root, as one not given on the command line."""
        return {k: x for k, x in v.items() if x is not None} if isinstance(v, dict) else v


class LabelStep(_Step):
    modalities: list[str]
    labelers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # each labeler's Config checks its own
    workers: int | None = None
    force: bool = False
    update_stale: bool = False


class TokenizerStep(_Step):
    modality: str
    out: str
    config: dict[str, Any] = Field(default_factory=dict)  # the tokenizer training settings (`--set`)


class TokenizeStep(_Step):
    tokenizers: list[str] | None = None   # default: every tokenizer trained in this job (not text)
    workers: int | None = None
    force: bool = False
    compression: Literal["gzip", "none"] = "gzip"  # token shards: gzip'd tar (same .tar name) or plain
    num_gpus: float = Field(0.0, ge=0)  # GPU fraction per actor (encoders on CUDA, samples decoded ahead)


class JobSpec(_Step):
    root: str
    ray_address: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    ingest: IngestStep | None = None
    label: LabelStep | None = None
    tokenizers: list[TokenizerStep] = Field(default_factory=list)
    tokenize: TokenizeStep | None = None
    train: TrainConfig | None = None  # the trainer's config; load_job resolves it against the job
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
    train = data.pop("train", None)  # validated below through the trainer's own reading of a config
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
        from prism4m.tokenizers.fourm.adapter import with_location

        # a tokenizer may be `NAME=DIR` (an ml-4m tokenizer for one folder) or a hub id
        spec.tokenize.tokenizers = [with_location(p, lambda loc: _local(base, loc)) for p in spec.tokenize.tokenizers]
    if train is not None:
        if not isinstance(train, dict):
            raise UserError(f"{path}: train: expected a mapping (the trainer's config, see jobs/train-tiny.yaml)")
        spec.train = config_from_dict(train, spec.base_dir, spec.root, f"{path} (train:)")
    return spec


# ---------------------------------------------------------------------------------- the steps
@dataclass
class StepResult:
    lines: list[str] = field(default_factory=list)  # what the matching command prints
    ok: bool = True                                 # False: some unit failed (the rest completed)


def _storage(job: JobSpec) -> dict | None:
    return job.storage_options or None


def ingest_step(job: JobSpec, step: IngestStep, show_progress: bool) -> StepResult:
    from prism4m.pipeline.ingest import ingest

    s = ingest(step.source, job.root, step.config, workers=step.workers, force=step.force,
               ray_address=job.ray_address, storage_options=_storage(job), show_progress=show_progress)
    return StepResult(describe_ingest(s), s.ok)


def label_step(job: JobSpec, step: LabelStep, show_progress: bool) -> StepResult:
    from prism4m.pipeline.label import label

    s = label(job.root, step.modalities, step.labelers, workers=step.workers, force=step.force,
              update_stale=step.update_stale, ray_address=job.ray_address, storage_options=_storage(job),
              show_progress=show_progress)
    return StepResult(describe_label(s), s.ok)


def tokenizer_step(job: JobSpec, step: TokenizerStep, show_progress: bool) -> StepResult:
    from prism4m.pipeline.tokenizer_training import train_tokenizer

    card = train_tokenizer(job.root, step.modality, step.out, step.config, progress=show_progress,
                           storage_options=_storage(job))
    return StepResult(describe_tokenizer(card, step.out))


def tokenize_step(job: JobSpec, step: TokenizeStep, show_progress: bool) -> StepResult:
    from prism4m.pipeline.tokenize import tokenize

    dirs = step.tokenizers or [t.out for t in job.tokenizers if t.modality != "text"]
    s = tokenize(job.root, dirs, workers=step.workers, force=step.force, num_gpus=step.num_gpus,
                 ray_address=job.ray_address,
                 storage_options=_storage(job), show_progress=show_progress, compression=step.compression)
    return StepResult(describe_tokenize(s), s.ok)


def train_step(job: JobSpec, step: TrainConfig, show_progress: bool) -> StepResult:
    """The trainer prints its own progress and table; not ok when a required baseline was missed."""
    from prism4m.trainer.train import required_baselines_met, train

    return StepResult([], required_baselines_met(step, train(step)))


Step = Callable[[JobSpec, Any, bool], StepResult]


def steps(job: JobSpec) -> Iterator[tuple[Step, Any]]:
    """The job's steps in flow order: ingest → label → tokenizers → tokenize → train."""
    if job.ingest:
        yield ingest_step, job.ingest
    if job.label:
        yield label_step, job.label
    for t in job.tokenizers:
        yield tokenizer_step, t
    if job.tokenize:
        yield tokenize_step, job.tokenize
    if job.train:
        yield train_step, job.train


def run_job(job: JobSpec, show_progress: bool = True, echo: Callable[[str], Any] = print) -> bool:
    """Run every step of ``job`` in order, echoing each step's lines as it ends, then the
    status table; False when any unit failed (the others completed) or a required baseline
    was missed."""
    from prism4m.report.status import dataset_status

    refuse_file_root(job.root)
    ok = True
    for step, section in steps(job):
        result = step(job, section, show_progress)
        for line in result.lines:
            echo(line)
        ok &= result.ok
    for line in describe_status(dataset_status(job.root, _storage(job))):
        echo(line)
    return ok
