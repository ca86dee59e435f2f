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
Steps present in the file run in the order ingest → label → (later steps registered by
the tokenizer and trainer packages). YAML is read with safe_load only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


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


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="allow")  # later steps (tokenize, train) add sections
    root: str
    ray_address: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    ingest: IngestStep | None = None
    label: LabelStep | None = None


def load_job(path: str | Path) -> JobSpec:
    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    base = Path(path).resolve().parent
    spec = JobSpec.model_validate(data)
    # Relative local paths in a job file are relative to the file, not to the shell's cwd.
    if "://" not in spec.root and not Path(spec.root).is_absolute():
        spec.root = str((base / spec.root).resolve())
    if spec.ingest and "://" not in spec.ingest.source and not Path(spec.ingest.source).is_absolute():
        spec.ingest.source = str((base / spec.ingest.source).resolve())
    return spec


def run_extra_steps(spec: JobSpec, show_progress: bool = True) -> bool:
    """Steps after labelling (tokenizer training, tokenize, train); wired as they land."""
    return True
