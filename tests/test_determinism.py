"""Determinism: two runs of the same job give byte-identical shards.

The job (ingest → label with the cheap labelers) runs twice into two roots, once with one
worker and once with two, so completion order differs between the runs. Every file under
the two roots must be identical except the timing fields of ledger records and manifest;
tar headers must be the canonical ones (member order of rgb/, mtime 0, uid/gid 0, no owner
names, mode 0644). (Tokenizer training is time-bounded, hence not part of this job.)
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

# ledger_fingerprint digests the ledger files' modification times (manifest.py): a timing too
TIMING = {"committed_at", "wall_s", "updated_at", "ledger_fingerprint"}


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith("_tmp")}


def _job(tmp_path: Path, name: str, source: Path, workers: int) -> Path:
    spec = {"root": str(tmp_path / name),
            "ingest": {"source": str(source), "workers": workers,
                       "config": {"shard_size": 3, "short_side": 96, "n_crops": 3, "seed": 7}},
            "label": {"modalities": ["canny_edge", "color_palette", "metadata"], "workers": workers}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_two_runs_of_the_same_job_are_byte_identical(ray_session, photo_corpus, tmp_path, capsys):
    from prism4m.api import run

    source = tmp_path / "corpus"
    shutil.copytree(photo_corpus, source)
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # an _errors line too
    assert run(str(_job(tmp_path, "a", source, 1)), show_progress=False)
    assert run(str(_job(tmp_path, "b", source, 2)), show_progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")

    assert sorted(a) == sorted(b), set(a) ^ set(b)
    tars = [p for p in a if p.endswith(".tar")]
    assert len(tars) == 6 * 3  # rgb, source, crop_settings + 3 labels, 3 shards each
    assert any(p.startswith("_errors/") for p in a)
    for rel in sorted(a):
        if rel.startswith("_ledger/") or rel == "prism4m.json":
            assert _strip_timing(json.loads(a[rel])) == _strip_timing(json.loads(b[rel])), rel
        else:
            assert a[rel] == b[rel], f"{rel} differs between two runs of the same job"

    # The canonical header of every member, and rgb's key order in every folder.
    for rel in tars:
        with tarfile.open(fileobj=io.BytesIO(a[rel])) as tar:
            infos = tar.getmembers()
        assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" and i.gname == ""
                   and i.mode == 0o644 and i.isfile() for i in infos), rel
        shard = rel.rsplit("/", 1)[1]
        with tarfile.open(fileobj=io.BytesIO(a[f"rgb/{shard}"])) as tar:
            rgb_keys = [i.name.split(".", 1)[0] for i in tar.getmembers()]
        assert [i.name.split(".", 1)[0] for i in infos] == rgb_keys, rel
