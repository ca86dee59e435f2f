"""Job specs shipped in jobs/ parse, and their labeler configs are valid and fit their GPUs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from prism4m.jobs import load_job
from prism4m.labelers.registry import get_labeler_class

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def _job_files() -> list[str]:
    """Job specs (a `root:` key); trainer configs live in jobs/ too."""
    import yaml

    return sorted(p.name for p in JOBS.glob("*.yaml") if "root" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("name", _job_files())
def test_job_specs_validate(name):
    spec = load_job(JOBS / name)
    if spec.label is None:
        return
    gpus = defaultdict(float)
    for lab_name in spec.label.modalities:
        lab = get_labeler_class(lab_name)(spec.label.labelers.get(lab_name, {}))  # pydantic validation
        gpus[lab.config.group] += lab.resources.num_gpus
    assert set(spec.label.labelers) <= set(spec.label.modalities)
    assert all(v <= 1.0 + 1e-9 for v in gpus.values()), dict(gpus)


def test_the_4m21_job_covers_every_builtin_labeler():
    from prism4m.labelers.registry import BUILTIN_LABELERS

    spec = load_job(JOBS / "4m21-labels.yaml")
    assert set(spec.label.modalities) == set(BUILTIN_LABELERS)
    for name in spec.label.modalities:
        cfg = spec.label.labelers.get(name, {})
        if "checkpoint" in get_labeler_class(name).Config.model_fields and name != "normal":
            assert cfg.get("checkpoint"), f"{name}: a real run needs a checkpoint"


def test_relative_paths_are_resolved_against_the_job_file(tmp_path):
    (tmp_path / "j.yaml").write_text("root: out/ds\ningest: {source: photos}\n")
    spec = load_job(tmp_path / "j.yaml")
    assert spec.root == str(tmp_path / "out" / "ds") and spec.ingest.source == str(tmp_path / "photos")


def test_tokenize_step_takes_a_compression_and_refuses_unknown_ones(tmp_path):
    (tmp_path / "j.yaml").write_text("root: ds\ntokenize: {compression: none}\n")
    assert load_job(tmp_path / "j.yaml").tokenize.compression == "none"
    (tmp_path / "j.yaml").write_text("root: ds\ntokenize: {}\n")
    assert load_job(tmp_path / "j.yaml").tokenize.compression == "gzip"
    (tmp_path / "j.yaml").write_text("root: ds\ntokenize: {compression: zstd}\n")
    with pytest.raises(Exception, match="compression"):
        load_job(tmp_path / "j.yaml")
