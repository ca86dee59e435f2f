"""Object storage end to end: source and ROOT on a loopback S3 server that fails and stalls.

ingest (s3:// source → s3:// root), label and tokenize run while the server answers a bounded
number of requests with 503 (before doing them), 500 (after doing them) and stalls past
the client's read timeout. The result must equal a local run of the same job: same
shards, same keys in the same order, same bytes, nothing lost, nothing duplicated.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest

from s3_server import FaultPlan, s3_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(300)

MODALITIES = ["canny_edge", "color_palette", "metadata"]
JOB = dict(shard_size=3, short_side=96, n_crops=2)
VOLATILE = {"committed_at", "wall_s"}  # timing fields of ledger records
TINY_TOKENIZER = {"input_size": 64, "steps": 2, "batch_size": 4, "codebook_size": 64, "max_train_crops": 32,
                  "max_eval_crops": 8, "warmup_steps": 1}


def _walk(fs, base: str) -> dict[str, bytes]:
    """Relative path → bytes of every file under base (skipping _tmp/, never read)."""
    out = {}
    for p in fs.find(base):
        rel = posixpath.relpath(p, base)
        if rel.startswith("_tmp/"):
            continue
        out[rel] = fs.cat_file(p)
    return out


def _members(tar_bytes: bytes) -> list[tuple[str, bytes]]:
    from prism4m.contract.store import iter_tar_bytes

    return [(f"{m.key}.{m.ext}", m.data) for m in iter_tar_bytes(tar_bytes)]


def _source_view(data: bytes) -> dict:
    rec = json.loads(data)
    rec.pop("uri")  # the only thing that names where the source was
    return rec


def _compare_roots(local: dict[str, bytes], remote: dict[str, bytes]) -> None:
    shard_files = sorted(p for p in local if p.endswith(".tar"))
    assert shard_files == sorted(p for p in remote if p.endswith(".tar")), "different shard files"
    for p in shard_files:
        if p.startswith("source/"):
            a, b = _members(local[p]), _members(remote[p])
            assert [n for n, _ in a] == [n for n, _ in b], p
            assert [_source_view(x) for _, x in a] == [_source_view(x) for _, x in b], p
        else:
            assert local[p] == remote[p], f"{p}: bytes differ from the local run"
    ledgers = sorted(p for p in local if p.startswith("_ledger/"))
    assert ledgers == sorted(p for p in remote if p.startswith("_ledger/"))
    for p in ledgers:
        a, b = json.loads(local[p]), json.loads(remote[p])
        for rec in (a, b):
            for k in VOLATILE:
                rec.pop(k, None)
            if rec["folder"] == "source":
                rec.pop("files")
            rec.get("inputs", {}).pop("source", None)
        assert a == b, f"{p}: ledger records differ"
    errors = sorted(p for p in local if p.startswith("_errors/") and "/_failed/" not in p
                    and not p.startswith("_errors/ingest/"))
    assert errors == sorted(p for p in remote if p.startswith("_errors/") and "/_failed/" not in p
                            and not p.startswith("_errors/ingest/"))
    for p in errors:
        assert local[p] == remote[p], p
    assert not [p for p in remote if "/_failed/" in p], "a unit failed on S3"


def test_ingest_label_on_faulty_s3_equals_local(s3_server, ray_session, photo_corpus, tmp_path):  # noqa: F811
    import fsspec

    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label
    from prism4m.contract.store import DatasetStore
    from prism4m.labelers.testing import aligned_report
    from prism4m.pipeline.tokenize import tokenize
    from prism4m.pipeline.tokenizer_training import train_tokenizer

    # Local reference run of the same job.
    local_root = str(tmp_path / "local")
    assert ingest(str(photo_corpus), local_root, show_progress=False, **JOB).ok
    assert label(local_root, MODALITIES, show_progress=False).ok
    # A tiny canny_edge tokenizer (2 training steps: the point is the stage, not the tokens).
    tok_dir = str(tmp_path / "tok_canny")
    train_tokenizer(local_root, "canny_edge", tok_dir, TINY_TOKENIZER, progress=False)
    assert not tokenize(local_root, [tok_dir], show_progress=False).failures

    s3_server.make_bucket("bkt")
    so = s3_server.storage_options(read_timeout=1.0)
    fs = fsspec.filesystem("s3", **so)
    for f in sorted(Path(photo_corpus).iterdir()):
        fs.pipe_file(f"bkt/src/{f.name}", f.read_bytes())

    plan = s3_server.faults.set_plan(FaultPlan(error_before=6, error_after=6, slow=3, slow_s=2.5, every=5))
    s = ingest("s3://bkt/src", "s3://bkt/ds", storage_options=so, source_options=so, show_progress=False, **JOB)
    assert s.ok, s.failures
    lab = label("s3://bkt/ds", MODALITIES, storage_options=so, show_progress=False)
    assert lab.ok, lab.failures
    tok = tokenize("s3://bkt/ds", [tok_dir], storage_options=so, show_progress=False)
    assert not tok.failures, tok.failures
    s3_server.faults.set_plan(None)

    # Every kind of fault really happened (otherwise this test proves nothing).
    assert plan.injected == {"error_before": 6, "error_after": 6, "slow": 3}, plan.injected
    assert len(plan.by_method) >= 2, plan.by_method

    store = DatasetStore("s3://bkt/ds", so)
    folders = aligned_report(store)
    tok_folders = {f for f in folders if f.startswith("tok_")}
    assert len(tok_folders) == 1, folders
    assert set(folders) == {"rgb", "source", "crop_settings", *MODALITIES, *tok_folders}
    _compare_roots(_walk(fsspec.filesystem("file"), local_root), _walk(fs, "bkt/ds"))

    # A rerun on S3 finds everything committed: nothing is redone (or duplicated).
    again = label("s3://bkt/ds", MODALITIES, storage_options=so, show_progress=False)
    assert again.planned == {}
    assert again.skipped == {m: folders["rgb"] for m in MODALITIES}


def test_cli_builds_and_reads_a_dataset_on_s3(s3_server, ray_session, photo_corpus, tmp_path):  # noqa: F811
    """What a user types: every stage on s3:// through the CLI, options passed as JSON."""
    import fsspec
    from typer.testing import CliRunner

    from prism4m.cli import app
    from prism4m.labelers.testing import aligned_report
    from prism4m.contract.store import DatasetStore
    from prism4m.pipeline.tokenizer_training import train_tokenizer

    s3_server.make_bucket("clibkt")
    so = s3_server.storage_options()
    fs = fsspec.filesystem("s3", **so)
    for f in sorted(Path(photo_corpus).iterdir()):
        fs.pipe_file(f"clibkt/src/{f.name}", f.read_bytes())
    opts = json.dumps(so)
    runner = CliRunner()

    def cli(*args: str):
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (args[0], result.output)
        return result.output

    root = "s3://clibkt/ds"
    cli("ingest", "s3://clibkt/src", root, "--shard-size", "3", "--short-side", "96", "--n-crops", "2",
        "--storage-options", opts, "--source-options", opts, "-q")
    cli("label", root, "-m", ",".join(MODALITIES), "--storage-options", opts, "-q")
    # The tokenizer trains from a local copy of the labels (its own input option is not S3-aware).
    local_root = str(tmp_path / "local")
    fs.get("clibkt/ds", local_root, recursive=True)
    tok_dir = str(tmp_path / "tok_canny")
    train_tokenizer(local_root, "canny_edge", tok_dir, TINY_TOKENIZER, progress=False)
    cli("tokenize", root, "-t", tok_dir, "--storage-options", opts, "-q")

    status = json.loads(cli("status", root, "--json", "--storage-options", opts))
    folders = {f["folder"]: f for f in status["folders"]}
    assert status["rgb_shards"] >= 2
    for name in ("rgb", *MODALITIES):
        assert folders[name]["committed"] == status["rgb_shards"] and not folders[name]["failed"], folders[name]
    assert "nothing to do" in cli("label", root, "-m", ",".join(MODALITIES), "--storage-options", opts, "-q")
    versions = json.loads(cli("tokens", "versions", root, "--storage-options", opts))
    assert list(versions) == ["tok_canny_edge@64"], versions
    aligned = aligned_report(DatasetStore(root, so))
    assert aligned["tok_canny_edge@64"] == aligned["rgb"]

    out = str(tmp_path / "parquet")
    cli("export", root, "-o", out, "--storage-options", opts)
    import pyarrow.dataset as ds

    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == folders["rgb"]["samples"] and "tok_canny_edge@64" in table.column_names

    # A malformed option is named, not a stack trace.
    bad = runner.invoke(app, ["status", root, "--storage-options", "{not json"])
    assert bad.exit_code == 2 and "--storage-options" in bad.output
