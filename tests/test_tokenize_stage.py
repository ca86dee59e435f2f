"""The tokenize stage on a real ingested root (lead's photo_root): alignment, provenance,
resume, re-tokenizing with another tokenizer (kept versions), invalid records, Parquet export."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prism4m.contract.store import DatasetStore, Member
from prism4m.modality.samples import iter_shard_inputs
from prism4m.pipeline.export import export_parquet
from prism4m.pipeline.tokenize import make_jobs, plan_tokenize, select_token_version, token_versions, tokenize
from prism4m.pipeline.tokenizer_training import train_tokenizer
from prism4m.tokenizers import load_tokenizer
from tokenize_fixtures import assert_nearest_codes

SIZE = 32  # 2x2 tokens: the stage is what is under test, not the model
TINY = {"input_size": SIZE, "steps": 2, "batch_size": 4, "codebook_size": 64, "max_train_crops": 64,
        "max_eval_crops": 16, "warmup_steps": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizers(photo_root, tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("tokenizers")
    dirs = {"rgb": str(base / "rgb"), "rgb_other": str(base / "rgb_other"), "edge": str(base / "edge")}
    train_tokenizer(photo_root, "rgb", dirs["rgb"], TINY, progress=False)
    train_tokenizer(photo_root, "rgb", dirs["rgb_other"], {**TINY, "seed": 1}, progress=False)
    train_tokenizer(photo_root, "canny_edge", dirs["edge"], TINY, progress=False)
    return dirs


@pytest.fixture(scope="module")
def tokenized_root(photo_root, tokenizers, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tok_root") / "ds")
    shutil.copytree(photo_root, root)
    summary = tokenize(root, [tokenizers["rgb"], tokenizers["edge"]], workers=1, show_progress=False)
    assert summary.ok, summary.failures
    assert summary.planned == {f"tok_rgb@{SIZE}": 2, f"tok_canny_edge@{SIZE}": 2}
    return root


def copy_root(src: str, tmp_path) -> str:
    dst = str(tmp_path / "ds")
    shutil.copytree(src, dst)
    return dst


def test_card_records_training_and_metrics(tokenizers, photo_root):
    card = json.loads(open(f"{tokenizers['rgb']}/card.json").read())
    assert card["type"] == "vq" and card["modality"] == "rgb" and card["token_folder"] == f"tok_rgb@{SIZE}"
    assert card["token_grid"] == [2, 2] and card["n_tokens"] == 4 and card["vocab_size"] == 64
    assert card["training"]["held_out_shards"] == [1] and card["training"]["train_shards"] == [0]
    assert card["training"]["config_hash"] and card["training"]["steps"] == 2
    assert 0 < card["metrics"]["held_out"]["psnr"] < 100
    assert 0 < card["codebook"]["usage"] <= 1 and card["codebook"]["perplexity"] >= 1
    edge = json.loads(open(f"{tokenizers['edge']}/card.json").read())
    assert "edge_iou" in edge["metrics"]["held_out"]


def test_training_resumes_and_a_finished_run_is_reused(photo_root, tmp_path):
    out = str(tmp_path / "t")
    first = train_tokenizer(photo_root, "canny_edge", out, {**TINY, "steps": 1}, progress=False)
    assert first.training["steps"] == 1
    # same config: nothing to do, same card back
    assert train_tokenizer(photo_root, "canny_edge", out, {**TINY, "steps": 1}, progress=False).created_at == first.created_at
    # more steps: continues from the step-1 checkpoint (another config hash, same weights start)
    state = json.loads(open(f"{out}/_checkpoint/state.json").read())
    assert state["step"] == 1


def test_a_finished_tokenizer_is_never_trained_over(tokenizers, photo_root, tmp_path):
    """Another modality or other settings into a finished tokenizer's directory are refused:
    its weights are what tokens made with it (kept versions included) decode with."""
    from prism4m.errors import UserError

    before = {p.name: p.read_bytes() for p in Path(tokenizers["edge"]).iterdir() if p.is_file()}
    for modality, settings in (("rgb", TINY), ("canny_edge", {**TINY, "seed": 7}), ("text", {})):
        with pytest.raises(UserError, match=r"holds a finished canny_edge tokenizer .*choose another --out"):
            train_tokenizer(photo_root, modality, tokenizers["edge"], settings, progress=False)
    assert {p.name: p.read_bytes() for p in Path(tokenizers["edge"]).iterdir() if p.is_file()} == before


def test_a_tokenizer_trained_before_the_root_grew_is_kept_as_it_is(photo_root, tmp_path, capsys):
    """Same modality, root and settings, more shards: rerunning training (a job spec rerun after
    the corpus grew) keeps the tokenizer, so its tokens stay current, and says how to retrain."""
    import numpy as np
    from PIL import Image

    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label

    root = str(tmp_path / "ds")
    shutil.copytree(photo_root, root)
    out = str(tmp_path / "tok")
    first = train_tokenizer(root, "canny_edge", out, TINY, progress=False)
    more = tmp_path / "more"
    more.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(more / f"new{i}.jpg")
    ingest(str(more), root, show_progress=False)  # the root's own settings
    label(root, ["canny_edge"], show_progress=False)
    n_train = len(DatasetStore(root).ledger("canny_edge")) - 1  # the last shard is held out
    assert n_train > len(first.training["train_shards"])
    capsys.readouterr()
    again = train_tokenizer(root, "canny_edge", out, TINY, progress=False)
    assert again.created_at == first.created_at and again.card_hash() == first.card_hash()
    assert f"was trained on {len(first.training['train_shards'])} of the {n_train} training shards" \
        in capsys.readouterr().err


def test_tokens_are_aligned_int16_and_match_in_process_encoding(tokenized_root, tokenizers):
    store = DatasetStore(tokenized_root)
    tok = load_tokenizer(tokenizers["edge"])
    folder = f"tok_canny_edge@{SIZE}"
    for index in sorted(store.ledger("rgb")):
        rgb_keys = [m.key for m in store.iter_shard("rgb", index)]
        members = store.read_shard(folder, index)
        assert [m.key for m in members] == rgb_keys and all(m.ext == "npy" for m in members)
        rec = store.ledger(folder)[index]
        assert rec["producer"]["kind"] == "tokenizer" and rec["producer"]["card_hash"] == tok.card.card_hash()
        assert set(rec["inputs"]) == {"rgb", "crop_settings", "canny_edge"}
        for m, s in zip(members, iter_shard_inputs(store, tok.spec, index)):
            arr = np.load(io.BytesIO(m.data), allow_pickle=False)
            assert arr.dtype == np.int16 and arr.shape == (len(s.rows), 4)
            assert arr.min() >= 0 and arr.max() < tok.card.vocab_size
            # the same crops encoded here give the same tokens (up to near-tied codes: other batch)
            assert_nearest_codes(tok, tok.prepare(s.value, s.rows, s.image_hw, s.region), arr)


def test_rerun_skips_and_forced_run_gives_identical_shards(tokenized_root, tokenizers, tmp_path):
    dirs = [tokenizers["rgb"], tokenizers["edge"]]
    again = tokenize(tokenized_root, dirs, workers=1, show_progress=False)
    assert again.planned == {} and again.report is None
    assert again.skipped == {f"tok_rgb@{SIZE}": 2, f"tok_canny_edge@{SIZE}": 2}

    root = copy_root(tokenized_root, tmp_path)
    before = {i: r["files"] for i, r in DatasetStore(root).ledger(f"tok_rgb@{SIZE}").items()}
    forced = tokenize(root, dirs, workers=1, force=True, show_progress=False)
    assert forced.planned[f"tok_rgb@{SIZE}"] == 2
    after = {i: r["files"] for i, r in DatasetStore(root).ledger(f"tok_rgb@{SIZE}").items()}
    assert after == before  # byte-identical tar shards (sha256 in the ledger)

    # Streamed (the next samples decoded and cropped in a thread while the encoder runs, as on
    # a GPU): the same bytes again.
    streamed = tokenize(root, dirs, workers=1, force=True, prefetch=3, show_progress=False)
    assert streamed.ok and streamed.planned[f"tok_rgb@{SIZE}"] == 2
    assert {i: r["files"] for i, r in DatasetStore(root).ledger(f"tok_rgb@{SIZE}").items()} == before


def test_new_tokenizer_is_stale_retokenizes_and_keeps_the_old_version(tokenized_root, tokenizers, tmp_path):
    root = copy_root(tokenized_root, tmp_path)
    store = DatasetStore(root)
    folder = f"tok_rgb@{SIZE}"
    old_hash = load_tokenizer(tokenizers["rgb"]).card.card_hash()
    new_hash = load_tokenizer(tokenizers["rgb_other"]).card.card_hash()
    assert old_hash != new_hash
    old_tokens = {i: store.read_shard(folder, i) for i in store.ledger(folder)}

    _, plan = plan_tokenize(store, make_jobs([tokenizers["rgb_other"]]))
    assert plan.stale == {folder: 2} and plan.planned == {folder: 2}

    summary = tokenize(root, [tokenizers["rgb_other"]], workers=1, show_progress=False)
    assert summary.ok and summary.planned == {folder: 2}
    assert all(r["producer"]["card_hash"] == new_hash for r in store.ledger(folder).values())
    # labels were not touched
    assert DatasetStore(root).ledger("canny_edge") == DatasetStore(tokenized_root).ledger("canny_edge")
    kept = f"{folder}~{old_hash[:8]}"
    assert {i: store.read_shard(kept, i) for i in store.ledger(kept)} == old_tokens
    versions = token_versions(root)[folder]
    assert {(v["folder"], v["card_hash"], v["current"]) for v in versions} == {
        (folder, new_hash, True), (kept, old_hash, False)}

    # select the old version again: default folder holds the old tokens, new ones are kept
    assert select_token_version(root, folder, old_hash) == 2
    assert {i: store.read_shard(folder, i) for i in store.ledger(folder)} == old_tokens
    assert f"{folder}~{new_hash[:8]}" in store.ledger_folders()
    # and tokenizing with the new tokenizer restores its kept tokens without encoding
    restored = tokenize(root, [tokenizers["rgb_other"]], workers=1, show_progress=False)
    assert all(r["encode_s"] == 0 for r in restored.report.results)
    assert all(r["producer"]["card_hash"] == new_hash for r in store.ledger(folder).values())


def test_invalid_label_gives_zero_byte_member_and_error_line(tokenized_root, tokenizers, tmp_path):
    root = copy_root(tokenized_root, tmp_path)
    store = DatasetStore(root)
    rec = store.ledger("canny_edge")[0]
    members = store.read_shard("canny_edge", 0)
    bad = members[1].key
    members[1] = Member(bad, members[1].ext, b"")  # the labeler failed on this sample
    store.commit_unit(0, {"canny_edge": members}, {"canny_edge": {"producer": rec["producer"],
                                                                  "inputs": rec.get("inputs", {})}},
                      {"canny_edge": [{"key": bad, "reason": "label_exception", "message": "test"}]})
    summary = tokenize(root, [tokenizers["edge"]], workers=1, show_progress=False)
    folder = f"tok_canny_edge@{SIZE}"
    assert summary.planned == {folder: 1} and summary.stale == {folder: 1}  # input recommitted → stale
    out = {m.key: m for m in store.read_shard(folder, 0)}
    assert out[bad].data == b"" and all(len(m.data) > 0 for k, m in out.items() if k != bad)
    assert store.ledger(folder)[0]["invalid"] == [bad]
    lines = [json.loads(x) for x in open(store.errors_path(folder, 0)).read().splitlines()]
    assert lines == [{"key": bad, "reason": "input_invalid", "message": lines[0]["message"]}]

    export_parquet(root)
    table = pq.read_table(f"{root}/_export/parquet/part-000000.parquet")
    row = table.column("key").to_pylist().index(bad)
    assert table.column(folder)[row].as_py() is None


def test_parquet_export_matches_the_shards(tokenized_root, tmp_path):
    out = str(tmp_path / "export")
    summary = export_parquet(tokenized_root, out)
    store = DatasetStore(tokenized_root)
    import pyarrow.dataset as ds

    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == summary["rows"] == sum(r["n_samples"] for r in store.ledger("rgb").values())
    assert table.column_names == ["key", "shard", "crop_settings", f"tok_canny_edge@{SIZE}", f"tok_rgb@{SIZE}"]
    t = table.schema.field(f"tok_rgb@{SIZE}").type
    assert pa.types.is_list(t) and pa.types.is_list(t.value_type) and t.value_type.value_type == pa.int16()
    rows = {k: i for i, k in enumerate(table.column("key").to_pylist())}
    for index in store.ledger("rgb"):
        for m, c in zip(store.read_shard(f"tok_rgb@{SIZE}", index), store.read_shard("crop_settings", index)):
            i = rows[m.key]
            assert table.column("shard")[i].as_py() == index
            assert np.array_equal(np.array(table.column(f"tok_rgb@{SIZE}")[i].as_py()), np.load(io.BytesIO(m.data)))
            assert np.array_equal(np.array(table.column("crop_settings")[i].as_py()), np.load(io.BytesIO(c.data)))


def test_parquet_export_of_a_root_with_an_empty_shard(tmp_path, ray_session):
    """A shard whose every input file was refused is committed empty (indices stay contiguous);
    export writes its part with no rows instead of failing on an untyped null mask."""
    from PIL import Image

    from prism4m.pipeline.ingest import ingest

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, colour in (("a", (40, 90, 200)), ("b", (200, 90, 40))):  # two different images
        Image.new("RGB", (96, 80), colour).save(corpus / f"{name}.jpg")
    (corpus / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # alone in the second shard
    root = str(tmp_path / "ds")
    ingest(str(corpus), root, shard_size=2, short_side=64, n_crops=1, show_progress=False)
    assert {i: r["n_samples"] for i, r in DatasetStore(root).ledger("rgb").items()} == {0: 2, 1: 0}
    summary = export_parquet(root, str(tmp_path / "export"))
    assert summary["rows"] == 2
    assert pq.read_table(tmp_path / "export" / "part-000001.parquet").num_rows == 0


def test_token_shards_are_gzipped_tars_that_webdataset_reads(tokenized_root, tokenizers, tmp_path):
    """Default compression: smaller than the raw int16 tokens, still read by ml-4m's loader
    (webdataset) under the .tar name; compression=None writes plain tars with the same tokens."""
    import tarfile

    import webdataset as wds

    store = DatasetStore(tokenized_root)
    folder = f"tok_rgb@{SIZE}"
    path = f"{tokenized_root}/{folder}/shard-000000.tar"
    data = open(path, "rb").read()
    assert data[:2] == b"\x1f\x8b" and store.ledger(folder)[0]["compression"] == "gzip"
    ours = {m.key: m.data for m in store.read_shard(folder, 0)}
    seen = {s["__key__"]: s["npy"] for s in wds.WebDataset(path, shardshuffle=False)}
    assert seen == ours and list(seen) == [m.key for m in store.iter_shard("rgb", 0)]
    with tarfile.open(path) as tar:  # plain tarfile too ("r:*" detects gzip)
        assert [i.name for i in tar.getmembers()] == [f"{k}.npy" for k in ours]

    root = copy_root(tokenized_root, tmp_path)
    plain = tokenize(root, [tokenizers["rgb"]], workers=1, force=True, compression=None, show_progress=False)
    assert plain.ok
    plain_store = DatasetStore(root)
    raw = open(f"{root}/{folder}/shard-000000.tar", "rb").read()
    assert raw[:2] != b"\x1f\x8b" and plain_store.ledger(folder)[0].get("compression") is None
    assert {m.key: m.data for m in plain_store.read_shard(folder, 0)} == ours
    assert len(data) < len(raw)
    with pytest.raises(ValueError, match="compression"):
        tokenize(root, [tokenizers["rgb"]], compression="zstd", show_progress=False)
