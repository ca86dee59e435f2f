"""User journeys from labels to a trained model, through the CLI (issue 11, parts 4 and 8).

One root is built the way a user builds it: the shared photo root (ingest + canny_edge), a
DINOv2 labeler run on a tiny random-weight checkpoint (a smoke run), color_palette and
metadata, SAM instance labels of known geometry; then `prism4m tokenizer train` for
dinov2_global, canny_edge, sam_instance and text, `prism4m tokenize`, and `prism4m export`.
The tests read what a user reads: `status`, the tokenizer cards, `estimate`, `train`'s output.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import model_fixtures_hf as fx
from cli_run import cli, ok
from prism4m.errors import UserError
from prism4m.contract.store import DatasetStore
from prism4m.pipeline.tokenize import make_jobs
from prism4m.pipeline.tokenizer_training import train_tokenizer
from test_tokenize_sam_instance import label_record
from tokenize_fixtures import commit_labels, rgb_sizes

# tiny tokenizers: the journey is under test, not their quality
TINY = ["steps=2", "batch_size=4", "codebook_size=64", "max_train_crops=64", "max_eval_crops=16"]
EDGE = "tok_canny_edge@32"
STEP_LINE = re.compile(r"^step (\d+)/(\d+)  loss \d+\.\d{3}  \d+\.\d steps/s  eta \S+$", re.M)


def sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def status_line(root: str, folder: str) -> str:
    return next(line for line in ok("status", root).splitlines() if line.split()[:1] == [folder])


@pytest.fixture(scope="module")
def journey(photo_root, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("journey")
    root = str(base / "ds")
    shutil.copytree(photo_root, root)
    store = DatasetStore(root)
    for index in sorted(store.ledger("rgb")):
        commit_labels(store, index, "sam_instance",
                      {k: json.dumps(label_record(*hw)).encode() for k, hw in rgb_sizes(store, index).items()})
    ckpt = fx.build_dinov2(base / "dinov2")  # marked random weights
    label_cfg = base / "labels.yaml"
    label_cfg.write_text(yaml.safe_dump({"dinov2": {"checkpoint": ckpt, "input_size": 56, "num_gpus": 0}}))
    ok("label", root, "-m", "dinov2,color_palette,metadata", "--config-file", label_cfg, "-w", "1", "-q")
    toks = {name: str(base / name) for name in ("dinov2_global", "canny_edge", "sam_instance", "text")}
    said = {
        "dinov2_global": ok("tokenizer", "train", root, "-m", "dinov2_global", "-o", toks["dinov2_global"], "-q",
                            *sets(TINY)),
        "canny_edge": ok("tokenizer", "train", root, "-m", "canny_edge", "-o", toks["canny_edge"], "-q",
                         *sets(TINY + ["input_size=32"])),
    }
    ok("tokenizer", "train", root, "-m", "sam_instance", "-o", toks["sam_instance"], "-q", *sets(TINY))
    ok("tokenize", root, "-t", toks["dinov2_global"], "-t", toks["canny_edge"], "-t", toks["sam_instance"],
       "-w", "1", "-q")
    # after tokenize: the text tokenizer learns the sam_instance@224 sequences' words too
    ok("tokenizer", "train", root, "-m", "text", "-o", toks["text"], "-q", "--set", "vocab_size=4400",
       "--set", "min_frequency=1")
    export = str(base / "export")
    ok("export", root, "--format", "parquet", "-o", export)
    return {"root": root, "base": base, "ckpt": ckpt, "toks": toks, "said": said, "export": export}


def train_config(path: Path, root: str, modalities: list[str], steps: int, **extra) -> Path:
    cfg = {
        "data": {"root": root, "modalities": modalities, "eval_shards": [1], "batch_size": 4, "num_workers": 0,
                 "shuffle_buffer": 4, **extra.pop("data", {})},
        # 16 + 16 tokens over up to five modalities: a random target budget often leaves a
        # modality with no target token at all, which used to drop it from the table
        "masking": {"num_input_tokens": 16, "num_target_tokens": 16, "mixture": "all2all"},
        "model": {"size": "micro"},
        "steps": steps, "out_dir": str(path.parent / "run"), "log_every": 1, "torch_threads": 1, **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def table_rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("modality ")) + 2
    return {line.split()[0]: line.split()[1:] for line in lines[start:] if line.strip()}


# ---------------------------------------------------------------------------------- part 8
def test_tokens_of_random_weight_labels_say_so_in_status_card_and_manifest(journey):
    root, toks, said = journey["root"], journey["toks"], journey["said"]
    assert "RANDOM WEIGHTS" in said["dinov2_global"] and "dinov2" in said["dinov2_global"]
    assert "RANDOM WEIGHTS" not in said["canny_edge"]  # real (Canny) labels: no flag
    cards = {n: json.loads(Path(toks[n], "card.json").read_text()) for n in ("dinov2_global", "canny_edge")}
    assert cards["dinov2_global"]["trained_on_random_weights"] is True
    assert cards["canny_edge"]["trained_on_random_weights"] is False
    assert "[RANDOM WEIGHTS]" in status_line(root, "tok_dinov2_global")
    for folder in (EDGE, "sam_instance@224"):
        assert "RANDOM WEIGHTS" not in status_line(root, folder)
    folders = json.loads(Path(root, "prism4m.json").read_text())["folders"]
    assert folders["tok_dinov2_global"]["random_weights"] is True and folders[EDGE]["random_weights"] is False


def test_a_tokenizer_trained_on_random_weight_labels_flags_tokens_of_real_labels(journey, tmp_path):
    # The smoke-run tokenizer applied to labels of a real model (the same checkpoint without
    # its random-weights marker): the labels are clean, the tokens are still not real.
    root = str(tmp_path / "ds")
    shutil.copytree(journey["root"], root)
    real = shutil.copytree(journey["ckpt"], tmp_path / "real", ignore=shutil.ignore_patterns("prism4m_random_weights*"))
    ok("label", root, "-m", "dinov2", "-c", f"dinov2.checkpoint={real}", "-c", "dinov2.input_size=56",
       "-c", "dinov2.num_gpus=0", "-w", "1", "-q", "--force")
    assert "RANDOM WEIGHTS" not in status_line(root, "dinov2")
    ok("tokenize", root, "-t", journey["toks"]["dinov2_global"], "-w", "1", "-q")
    line = status_line(root, "tok_dinov2_global")
    committed, stale = line.replace("[RANDOM WEIGHTS]", "").split()[2:4]
    assert "[RANDOM WEIGHTS]" in line and (committed, stale) == ("2", "0")  # recomputed from the real labels


def test_estimate_on_a_random_weight_pilot_says_so(journey):
    out = ok("estimate", "--images", "1000000", "--gpus", "8", "--root", journey["root"])
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["dinov2"], ["canny_edge"])}
    assert "[RANDOM WEIGHTS]" in rows["dinov2"] and "RANDOM WEIGHTS" not in rows["canny_edge"]
    assert re.search(r"^warning: dinov2 measured on a pilot labelled with random weights", out, re.M)


def test_train_warns_of_random_weights_prints_progress_and_says_it_resumed(journey, tmp_path):
    cfg = train_config(tmp_path / "train.yaml", journey["root"], ["tok_dinov2_global", EDGE], steps=3)
    out = ok("train", cfg)
    warning = next(line for line in out.splitlines() if "RANDOM WEIGHTS" in line)
    assert "tok_dinov2_global" in warning and EDGE not in warning
    assert out.index(warning) < out.index("step 1/3")  # said at start, before training
    assert [m.group(1, 2) for m in STEP_LINE.finditer(out)] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert "resumed" not in out
    train_config(cfg, journey["root"], ["tok_dinov2_global", EDGE], steps=5)
    out = ok("train", cfg)
    assert "resumed from step 3" in out
    assert [m.group(1) for m in STEP_LINE.finditer(out)] == ["4", "5"]


def _embedding_rows(run: Path, modality: str) -> int:
    state = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)["model"]
    return state[f"enc_token_emb.{modality}.weight"].shape[0]


def test_train_reads_the_vocabulary_from_the_ledger_and_never_guesses_it(journey, tmp_path):
    vocab = json.loads(Path(journey["toks"]["dinov2_global"], "card.json").read_text())["vocab_size"]
    # A manifest that lost the folder (a run killed before rewriting it): the ledger says.
    root = str(tmp_path / "stale")
    shutil.copytree(journey["root"], root)
    manifest = json.loads(Path(root, "prism4m.json").read_text())
    del manifest["folders"]["tok_dinov2_global"]
    Path(root, "prism4m.json").write_text(json.dumps(manifest))
    ok("train", train_config(tmp_path / "a" / "train.yaml", root, ["tok_dinov2_global"], steps=1))
    assert _embedding_rows(tmp_path / "a" / "run", "tok_dinov2_global") == vocab  # not ml-4m's 8192
    # Token shards with no manifest, card or ledger (an ml-4m layout copy): refused, named.
    bare = tmp_path / "bare"
    for folder in ("tok_dinov2_global", "crop_settings"):
        shutil.copytree(Path(journey["root"], folder), bare / folder)
    code, out = cli("train", train_config(tmp_path / "b" / "train.yaml", str(bare), ["tok_dinov2_global"], steps=1))
    assert code == 2 and "Traceback" not in out, out
    assert re.search(r"^error: .*tok_dinov2_global.*vocab_size", out, re.M)
    # With the size stated, the same shards train.
    ok("train", train_config(tmp_path / "c" / "train.yaml", str(bare), ["tok_dinov2_global"], steps=1,
                             modality_overrides={"tok_dinov2_global": {"vocab_size": vocab}}))


def test_training_from_the_parquet_export_reads_sequences_and_evaluates_every_target(journey, tmp_path):
    modalities = [EDGE, "tok_dinov2_global", "sam_instance@224", "metadata", "color_palette"]
    cfg = train_config(tmp_path / "train.yaml", journey["export"], modalities, steps=2,
                       data={"text_tokenizer": journey["toks"]["text"]})
    out = ok("train", cfg)
    # the export says which columns came from random weights, as the ledger would
    assert "tok_dinov2_global" in next(line for line in out.splitlines() if "RANDOM WEIGHTS" in line)
    rows = table_rows(out)
    assert set(rows) == set(modalities)
    for name, cells in rows.items():
        assert float(cells[0]) > 0, (name, cells)  # a validation loss, not "not evaluated"
    logged = set().union(*(json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()))
    assert {"loss/metadata", "loss/color_palette"} & logged  # trained on, not only evaluated


# ---------------------------------------------------------------------------------- part 4
@pytest.mark.parametrize("setting, named", [
    ("vocab_size=200", r"vocab_size: must exceed the \d+ fixed tokens"),
    ("vocab_sise=9000", r"vocab_sise: unknown setting"),
])
def test_bad_tokenizer_settings_are_one_line_errors(journey, tmp_path, setting, named):
    code, out = cli("tokenizer", "train", journey["root"], "-m", "text", "-o", tmp_path / "t", "--set", setting)
    assert code == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert re.match(r"error: tokenizer settings: " + named, out)
    key, value = setting.split("=")
    with pytest.raises(UserError, match=named):
        train_tokenizer(journey["root"], "text", str(tmp_path / "t"), {key: int(value)}, progress=False)


def test_tokenize_refuses_what_it_cannot_do_in_one_line(journey, photo_root):
    text = journey["toks"]["text"]
    code, out = cli("tokenize", journey["root"], "-t", text, "-q")
    assert code == 2 and "Traceback" not in out, out
    assert re.match(rf"error: --tokenizer {re.escape(text)}: a text \(WordPiece\) tokenizer", out)
    with pytest.raises(UserError, match="WordPiece"):
        make_jobs([text])
    # a root without the tokenizer's labels: an error, not "nothing to do" (refused while
    # planning, so the shared root is not written)
    code, out = cli("tokenize", photo_root, "-t", journey["toks"]["dinov2_global"], "-q")
    assert code == 2 and re.match(r"error: .*dinov2 has no committed shard to tokenize; label it first", out), out


def test_a_train_config_typo_is_named_in_one_line(journey, tmp_path):
    cfg = train_config(tmp_path / "train.yaml", journey["root"], [EDGE], steps=1)
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["batch_sise"] = raw["data"].pop("batch_size")
    cfg.write_text(yaml.safe_dump(raw))
    code, out = cli("train", cfg)
    assert code == 2 and out == f"error: {cfg}: data.batch_sise: unknown setting\n", out
