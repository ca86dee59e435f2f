"""`estimate`: hours and GPU-hours from ledger wall times (or benchmark figures), assumptions printed."""

from __future__ import annotations

import json
import math

import pytest

from prism4m.contract.store import DatasetStore, Member
from prism4m.report.estimate import estimate, format_estimate

# (folder, shard) → (n_samples, wall_s); depth asks for 0.2 GPU per actor, canny_edge for none
RECORDS = {("canny_edge", 0): (10, 2.0), ("canny_edge", 1): (30, 4.0),
           ("depth", 0): (8, 16.0), ("depth", 1): (8, 4.0)}


@pytest.fixture
def ledger_root(tmp_path) -> str:
    store = DatasetStore(str(tmp_path / "ds"))
    for (folder, shard), (n, wall) in RECORDS.items():
        members = [Member(f"k{shard}_{i}", "png", b"x") for i in range(n)]
        rec = {"producer": {"kind": "labeler", "name": folder}, "inputs": {}, "wall_s": wall,
               "device": "cpu", "random_weights": False}
        store.commit_unit(shard, {folder: members}, {folder: rec})
    return store.url


def test_estimate_from_ledger_wall_times(ledger_root):
    est = estimate(images=1_000_000, gpus=4, labelers=["canny_edge", "depth"], root=ledger_root)
    rows = {r.name: r for r in est.rows}
    canny_rate, depth_rate = 40 / 6.0, 16 / 20.0  # pooled: total samples / total wall_s
    assert rows["canny_edge"].img_per_s == pytest.approx(canny_rate)
    assert rows["depth"].img_per_s == pytest.approx(depth_rate)
    # depth: 0.2 GPU per actor → 5 actors per GPU → 20 actors on 4 GPUs
    assert rows["depth"].actors == 20
    assert rows["depth"].hours == pytest.approx(1_000_000 / (depth_rate * 20) / 3600)
    assert rows["depth"].gpu_hours == pytest.approx(rows["depth"].hours * 4)
    # canny_edge is CPU-only: 8 cores per GPU by default, 1 CPU per actor → 32 actors
    assert rows["canny_edge"].actors == 32
    assert rows["canny_edge"].hours == pytest.approx(1_000_000 / (canny_rate * 32) / 3600)
    assert est.hours == pytest.approx(rows["depth"].hours + rows["canny_edge"].hours)
    assert rows["depth"].device == "cpu"
    # doubling GPUs halves the hours and keeps GPU-hours
    est8 = estimate(images=1_000_000, gpus=8, labelers=["depth"], root=ledger_root)
    assert est8.hours == pytest.approx(rows["depth"].hours / 2)
    assert est8.gpu_hours == pytest.approx(rows["depth"].gpu_hours)


def test_estimate_packs_actors_as_the_pilot_configured_the_labeler(tmp_path):
    """human_poses asks for a GPU share with VitPose (its default) and none with BlazePose: a
    pilot run with BlazePose is projected on CPU cores, not 10 actors per GPU."""
    store = DatasetStore(str(tmp_path / "ds"))
    for shard, config in enumerate(({"backend": "mediapipe"}, {"backend": "mediapipe"})):
        rec = {"producer": {"kind": "labeler", "name": "human_poses", "config": config}, "inputs": {},
               "wall_s": 2.0, "device": "cpu", "random_weights": False}
        store.commit_unit(shard, {"human_poses": [Member(f"k{shard}", "json", b"{}")]}, {"human_poses": rec})
    row = estimate(1000, 4, root=store.url).rows[0]
    assert (row.num_gpus, row.actors) == (0.0, 32)  # 8 cores per GPU, 1 CPU each
    # a config this version no longer accepts: the class defaults (VitPose's 0.1 GPU), as before
    rec = {"producer": {"kind": "labeler", "name": "human_poses", "config": {"no_such_key": 1}}, "inputs": {},
           "wall_s": 2.0, "device": "cpu", "random_weights": False}
    store.commit_unit(2, {"human_poses": [Member("k2", "json", b"{}")]}, {"human_poses": rec})
    row = estimate(1000, 4, root=store.url).rows[0]
    assert row.num_gpus == pytest.approx(0.1) and row.actors == 40


def test_estimate_reports_missing_labelers_and_assumptions(ledger_root):
    est = estimate(images=1000, gpus=1, labelers=["depth", "sam_instance"], root=ledger_root)
    assert est.missing == ["sam_instance"] and [r.name for r in est.rows] == ["depth"]
    text = format_estimate(est)
    assert "no throughput measured for: sam_instance" in text
    assert "assumptions:" in text and "device: cpu" in text and "linear scaling" in text
    assert "floor(1 / num_gpus)" in text
    hours_cell = f"{est.rows[0].hours:,.2f}"
    assert hours_cell in text


def test_estimate_all_labelers_in_ledger_by_default(ledger_root):
    assert sorted(r.name for r in estimate(100, 2, root=ledger_root).rows) == ["canny_edge", "depth"]


def test_estimate_from_benchmark_file(tmp_path):
    bench = tmp_path / "latest.json"
    bench.write_text(json.dumps({"device": "cpu", "label_sam_instance_img_per_s": 2.0,
                                 "label_canny_edge_img_per_s": 50.0, "ingest_img_per_s": 99.0}))
    est = estimate(images=3600, gpus=2, labelers=None, root=None, bench_file=bench)
    rows = {r.name: r for r in est.rows}
    assert set(rows) == {"sam_instance", "canny_edge"}
    # sam_instance: 0.5 GPU per actor → 2 per GPU → 4 actors at 2 img/s
    assert rows["sam_instance"].actors == 4
    assert rows["sam_instance"].hours == pytest.approx(3600 / (2.0 * 4) / 3600)
    assert "benchmark" in rows["sam_instance"].source
    assert math.isclose(est.gpu_hours, est.hours * 2)


def test_estimate_rejects_nonsense():
    with pytest.raises(ValueError):
        estimate(images=10, gpus=0)


def test_without_a_root_the_benchmark_file_is_explicit_or_the_checkouts(tmp_path, monkeypatch):
    """`estimate --bench FILE`; without it a checkout's benchmarks/results/latest.json, and when
    there is none (an installed package) one clear line saying what to pass."""
    from typer.testing import CliRunner

    import prism4m.report.estimate as estimate_mod
    from prism4m.cli import app
    from prism4m.errors import UserError

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"device": "cpu", "label_canny_edge_img_per_s": 50.0}))
    runner = CliRunner()
    out = runner.invoke(app, ["estimate", "--images", "100", "--gpus", "1", "--bench", str(bench)])
    assert out.exit_code == 0, out.output
    assert "canny_edge" in out.stdout and f"benchmark figures ({bench})" in out.stdout

    missing = runner.invoke(app, ["estimate", "--images", "100", "--gpus", "1", "--bench", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "--bench" in missing.stderr and "no such file" in missing.stderr

    monkeypatch.setattr(estimate_mod, "CHECKOUT_BENCH_FILE", tmp_path / "no_checkout" / "latest.json")
    with pytest.raises(UserError, match="--root PILOT .* or --bench FILE"):
        estimate(images=100, gpus=1)
    bare = runner.invoke(app, ["estimate", "--images", "100", "--gpus", "1"])
    assert bare.exit_code == 2 and bare.stderr.startswith("error: no throughput to estimate from")
    monkeypatch.setattr(estimate_mod, "CHECKOUT_BENCH_FILE", bench)
    assert [r.name for r in estimate(images=100, gpus=1).rows] == ["canny_edge"]
