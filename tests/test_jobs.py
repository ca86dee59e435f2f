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


def test_train_section_is_the_trainers_config_resolved_against_the_job(tmp_path):
    from prism4m.trainer.config import TrainConfig

    (tmp_path / "j.yaml").write_text("root: out/ds\ntrain: {data: {modalities: [tok_rgb@224]}, out_dir: runs/a, "
                                     "steps: 3}\n")
    spec = load_job(tmp_path / "j.yaml")
    assert isinstance(spec.train, TrainConfig) and spec.train.steps == 3
    assert spec.train.data.root == spec.root == str(tmp_path / "out" / "ds")  # the job's root by default
    assert spec.train.out_dir == str(tmp_path / "runs" / "a")
    (tmp_path / "j.yaml").write_text("root: ds\ntrain: {data: {modalities: [tok_rgb@224], batch_sise: 4}}\n")
    with pytest.raises(Exception, match=r"j\.yaml \(train:\): data\.batch_sise: unknown setting"):
        load_job(tmp_path / "j.yaml")
    (tmp_path / "j.yaml").write_text("root: ds\ntrain: 5\n")
    with pytest.raises(Exception, match=r"j\.yaml: train: expected a mapping"):
        load_job(tmp_path / "j.yaml")


def test_ingest_settings_are_checked_when_the_job_is_loaded_and_only_given_ones_count(tmp_path):
    (tmp_path / "j.yaml").write_text("root: ds\ningest: {source: photos, config: {shard_size: 5, short_side: null}}\n")
    cfg = load_job(tmp_path / "j.yaml").ingest.config
    assert cfg.model_dump(exclude_unset=True) == {"shard_size": 5}  # null: the root's own, as not given
    (tmp_path / "j.yaml").write_text("root: ds\ningest: {source: photos, config: {shard_sise: 5}}\n")
    with pytest.raises(Exception, match=r"j\.yaml: ingest\.config\.shard_sise: unknown setting"):
        load_job(tmp_path / "j.yaml")


def test_steps_run_in_flow_order_whatever_the_file_order(tmp_path):
    from prism4m.jobs import ingest_step, label_step, steps, tokenize_step, tokenizer_step, train_step

    (tmp_path / "j.yaml").write_text(
        "train: {data: {modalities: [tok_rgb@224]}}\ntokenize: {}\n"
        "tokenizers: [{modality: rgb, out: t1}, {modality: text, out: t2}]\n"
        "label: {modalities: [canny_edge]}\ningest: {source: photos}\nroot: ds\n")
    job = load_job(tmp_path / "j.yaml")
    assert [(fn, getattr(section, "out", None)) for fn, section in steps(job)] == [
        (ingest_step, None), (label_step, None), (tokenizer_step, str(tmp_path / "t1")),
        (tokenizer_step, str(tmp_path / "t2")), (tokenize_step, None), (train_step, None)]


def test_the_runner_calls_each_stage_with_its_section_and_prints_its_lines(tmp_path, monkeypatch):
    """Every step is the stage function the matching command calls; the runner echoes each
    step's lines as it ends, then the status table, and is not ok when any step was not."""
    from types import SimpleNamespace

    import prism4m.jobs as jobs
    import prism4m.pipeline.ingest as ingest_mod
    import prism4m.pipeline.label as label_mod
    import prism4m.pipeline.tokenize as tokenize_mod
    import prism4m.pipeline.tokenizer_training as training_mod
    import prism4m.report.status as status_mod
    import prism4m.trainer.train as trainer_mod

    calls = []

    def stage(name, ok=True):
        def fn(*args, **kwargs):
            calls.append((name, args, kwargs))
            return SimpleNamespace(ok=ok, name=name)
        return fn

    monkeypatch.setattr(ingest_mod, "ingest", stage("ingest"))
    monkeypatch.setattr(label_mod, "label", stage("label", ok=False))
    monkeypatch.setattr(training_mod, "train_tokenizer", stage("tokenizer"))
    monkeypatch.setattr(tokenize_mod, "tokenize", stage("tokenize"))
    monkeypatch.setattr(trainer_mod, "train", stage("train"))
    monkeypatch.setattr(trainer_mod, "required_baselines_met", lambda cfg, summary: True)
    monkeypatch.setattr(status_mod, "dataset_status", stage("status"))
    for name in ("ingest", "label", "tokenize", "status"):
        monkeypatch.setattr(jobs, f"describe_{name}", lambda s, *a, **k: [f"{s.name} line"])
    monkeypatch.setattr(jobs, "describe_tokenizer", lambda card, out: [f"tokenizer line {Path(out).name}"])

    (tmp_path / "j.yaml").write_text(
        "root: ds\nstorage_options: {anon: true}\ningest: {source: photos, config: {shard_size: 5}}\n"
        "label: {modalities: [canny_edge], update_stale: true}\n"
        "tokenizers: [{modality: rgb, out: t1, config: {steps: 2}}, {modality: text, out: t2}]\n"
        "tokenize: {compression: none}\ntrain: {data: {modalities: [tok_rgb@224]}, steps: 1}\n")
    job = load_job(tmp_path / "j.yaml")
    echoed = []
    assert jobs.run_job(job, show_progress=False, echo=echoed.append) is False  # label was not ok
    assert echoed == ["ingest line", "label line", "tokenizer line t1", "tokenizer line t2", "tokenize line",
                      "status line"]
    assert [c[0] for c in calls] == ["ingest", "label", "tokenizer", "tokenizer", "tokenize", "train", "status"]
    by = {c[0]: c for c in calls}
    assert by["ingest"][1][:2] == (str(tmp_path / "photos"), job.root)
    assert by["ingest"][1][2].model_dump(exclude_unset=True) == {"shard_size": 5}
    assert by["ingest"][2]["storage_options"] == {"anon": True}
    assert by["label"][1] == (job.root, ["canny_edge"], {}) and by["label"][2]["update_stale"] is True
    assert calls[2][1] == (job.root, "rgb", str(tmp_path / "t1"), {"steps": 2})
    assert by["tokenize"][1] == (job.root, [str(tmp_path / "t1")])  # trained in this job, text left out
    assert by["tokenize"][2]["compression"] == "none"
    assert by["train"][1] == (job.train,) and by["status"][1] == (job.root, {"anon": True})


def test_the_official_tokens_job_names_a_published_tokenizer_for_each_folder():
    """jobs/4m21-tokens-official.yaml: every entry is an ml-4m tokenizer request whose family
    is supported, and together they write ml-4m's token folders for what 4M-21 labels."""
    from prism4m.tokenizers.fourm.adapter import parse_request
    from prism4m.tokenizers.fourm.families import family_from_name

    spec = load_job(JOBS / "4m21-tokens-official.yaml")
    folders = set()
    for given in spec.tokenize.tokenizers:
        req = parse_request(given)
        assert req is not None and req.location == given.rpartition("=")[2], given  # hub ids stay hub ids
        fam = family_from_name(req.location)
        assert fam is not None and fam.supported, given
        folders.add(fam.out_folder_for(req.label_folder or fam.label_folders[0], 224))
    assert folders >= {"tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_canny_edge@224", "tok_sam_edge@224",
                       "tok_semseg@224", "tok_clip@224", "tok_dinov2@224", "tok_dinov2_global", "sam_instance@224"}


def test_tokenizer_locations_in_a_job_resolve_against_the_file(tmp_path):
    (tmp_path / "tok" / "depth").mkdir(parents=True)
    (tmp_path / "j.yaml").write_text("root: ds\ntokenize: {tokenizers: ['depth:nearest=tok/depth', tok/mine, "
                                     "'EPFL-VILAB/4M_tokenizers_rgb_16k_224-448', 'tok/depth']}\n")
    toks = load_job(tmp_path / "j.yaml").tokenize.tokenizers
    assert toks == [f"depth:nearest={tmp_path}/tok/depth", f"{tmp_path}/tok/mine",
                    "EPFL-VILAB/4M_tokenizers_rgb_16k_224-448", f"{tmp_path}/tok/depth"]
