import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from trainer_fixtures import make_text_tokenizer, token_modalities, write_token_root  # noqa: E402

from prism4m.errors import UserError  # noqa: E402
from prism4m.trainer.modalities import build_registry  # noqa: E402
from prism4m.trainer.model import FourM  # noqa: E402
from prism4m.trainer.optim import param_groups  # noqa: E402
from prism4m.trainer.train import main, train  # noqa: E402


@pytest.fixture(scope="module")
def token_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("tokens")
    root = str(base / "root")
    write_token_root(root, n_shards=4, per_shard=48, n_crops=2, seed=1)
    tokenizer_path = str(base / "tokenizer.json")
    make_text_tokenizer().save(tokenizer_path)
    return root, tokenizer_path


def config(root, tokenizer_path, out_dir, **over):
    names, overrides = token_modalities()
    overrides["caption"].pop("vocab_size")  # taken from the tokenizer
    cfg = {
        "data": {
            "root": root, "modalities": names, "text_tokenizer": tokenizer_path, "eval_shards": [3],
            "batch_size": 16, "num_workers": 0, "shuffle_buffer": 32,
        },
        "masking": {"num_input_tokens": 16, "num_target_tokens": 16, "mixture": "all2all"},
        "model": {"size": "micro"},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "modality_overrides": overrides,
        "steps": 6, "out_dir": str(out_dir), "log_every": 1, "print_table": False, "torch_threads": 1,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    return cfg


def test_resumed_run_gives_the_same_next_step_loss(token_root, tmp_path):
    root, tok = token_root
    # Workers on, an odd checkpoint step: the loader position must survive the restart.
    full = train(config(root, tok, tmp_path / "full", steps=6, checkpoint_every=3, data__num_workers=2))
    checkpoint = tmp_path / "full" / "checkpoints" / "step-00000003.pt"
    assert checkpoint.exists()
    resumed = train(config(root, tok, tmp_path / "resumed", steps=6, data__num_workers=2, resume_from=str(checkpoint)))
    assert resumed["history"][0]["step"] == 4
    for a, b in zip(full["history"][3:], resumed["history"]):
        assert a["step"] == b["step"]
        assert a["loss"] == b["loss"]
    # An unrelated restart (fresh model, same data) would not match: the check has teeth.
    fresh = train(config(root, tok, tmp_path / "fresh", steps=1, data__num_workers=2))
    assert fresh["history"][0]["loss"] != full["history"][3]["loss"]
    lines = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert {"loss/tok_a@32", "loss/tok_b@32", "loss/caption"} <= set().union(*(r.keys() for r in lines))


def test_rerun_in_same_out_dir_continues_from_latest_checkpoint(token_root, tmp_path):
    root, tok = token_root
    train(config(root, tok, tmp_path, steps=3))
    again = train(config(root, tok, tmp_path, steps=5))
    assert [h["step"] for h in again["history"]] == [4, 5]


def test_rerun_of_another_model_in_the_same_out_dir_names_what_changed(token_root, tmp_path):
    root, tok = token_root
    train(config(root, tok, tmp_path, steps=2))
    fewer = config(root, tok, tmp_path, steps=3)
    fewer["data"]["modalities"] = fewer["data"]["modalities"][:2]  # caption dropped
    with pytest.raises(UserError, match=r"latest\.pt: a checkpoint of another model \(data\.modalities was .*caption"
                                        r".*resume: false"):
        train(fewer)
    assert [h["step"] for h in train({**fewer, "resume": False})["history"]][-1] == 3  # starts over, as told


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, result_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo",
    )
    summary = train(cfg)
    params = torch.cat([p.detach().flatten() for p in summary["model"].parameters()])
    torch.save({"params": params, "losses": [h["loss"] for h in summary["history"]]}, f"{result_dir}/rank{rank}.pt")


def test_two_process_ddp_step_runs_and_keeps_ranks_in_sync(token_root, tmp_path):
    root, tok = token_root
    cfg = config(root, tok, tmp_path / "run", steps=2, torch_threads=1, data__eval_shards=[])
    # fork: the children reuse this process's imports (spawn re-imports torch: ~10 s on 2 cores)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["params"], r1["params"])  # gradients were all-reduced
    assert r0["losses"][0] != r1["losses"][0]  # each rank read its own shards
    assert all(math.isfinite(x) for x in r0["losses"] + r1["losses"])
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_tiny_model_beats_the_unigram_baseline(token_root, tmp_path):
    root, tok = token_root
    optim = {"lr": 5e-3, "min_lr": 5e-3, "warmup_steps": 10}
    summary = train(config(root, tok, tmp_path, steps=120, log_every=50, optim=optim))
    table = {row["modality"]: row for row in summary["table"]}
    assert set(table) == {"tok_a@32", "tok_b@32", "caption"}
    for row in table.values():
        assert row["val_loss"] < row["unigram_entropy"], row


def test_main_reads_a_yaml_config(token_root, tmp_path, capsys):
    root, tok = token_root
    cfg = config(root, tok, tmp_path / "run", steps=2, print_table=True, data__eval_max_batches=1)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"train": cfg}))
    assert main(str(path)) == 0
    assert "unigram H" in capsys.readouterr().out
    cfg["require_beat_baseline"] = True  # 2 steps cannot beat the baseline
    cfg["out_dir"] = str(tmp_path / "run2")
    path.write_text(yaml.safe_dump(cfg))
    assert main(str(path)) == 1


def test_config_mistakes_are_one_line_errors_naming_the_setting(token_root, tmp_path):
    from prism4m.trainer.build import Setup
    from prism4m.trainer.config import validate_config

    root, tok = token_root
    no_tokenizer = validate_config(config(root, tok, tmp_path / "a", data__text_tokenizer=None))
    with pytest.raises(UserError, match=r"data\.text_tokenizer is not set.*text sequences \(caption\)"):
        Setup(no_tokenizer)
    # a held-out shard the root does not have: training would silently never evaluate
    with pytest.raises(UserError, match=r"data\.eval_shards: \[9\] not among the shards .* \(0-3\)"):
        Setup(validate_config(config(root, tok, tmp_path / "c", data__eval_shards=[3, 9])))
    # raw pose labels: their boxes are in pixels of an image size only human_poses@tok holds
    cfg = config(root, tok, tmp_path / "b")
    cfg["data"]["modalities"] = [*cfg["data"]["modalities"], "human_poses"]
    with pytest.raises(UserError, match=r"data\.modalities: human_poses: .*list human_poses@tok"):
        Setup(validate_config(cfg))


def test_registry_reads_tokenizer_cards_from_the_manifest_and_config_overrides_win(tmp_path):
    (tmp_path / "prism4m.json").write_text(json.dumps({
        "modalities": {"tok_depth@224": {"tokenizer_card": {"type": "vq", "vocab_size": 1024, "token_grid": [7, 7]}}}
    }))
    registry = build_registry(["tok_depth@224", "caption"], str(tmp_path), {"caption": {"num_tokens": 64}})
    assert (registry["tok_depth@224"].vocab_size, registry["tok_depth@224"].num_tokens) == (1024, 49)
    assert registry["caption"].type == "seq" and registry["caption"].num_tokens == 64
    # A token folder the root does not describe: its vocabulary is never guessed (ml-4m's
    # 16384 would train on the wrong ids); an override states it.
    with pytest.raises(UserError, match=r"tok_rgb@224.*modality_overrides\.tok_rgb@224\.vocab_size"):
        build_registry(["tok_rgb@224"], str(tmp_path))
    registry = build_registry(["tok_rgb@224"], str(tmp_path), {"tok_rgb@224": {"vocab_size": 1024}})
    assert registry["tok_rgb@224"].vocab_size == 1024 and registry["tok_rgb@224"].num_tokens == 196  # ml-4m grid
    with pytest.raises(ValueError, match="tok_unknown"):
        build_registry(["tok_unknown@224"])


def test_model_layout_follows_4m():
    registry = build_registry(["tok_rgb@224", "caption"])
    model = FourM(registry, "tiny")
    assert len(model.encoder) == 6 and len(model.decoder) == 6 and model.dim == 384
    assert model.encoder[0].mlp.out.in_features == int(2 * 4 * 384 / 3)
    assert all(not isinstance(m, torch.nn.Linear) or m.bias is None for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(n.bias is None and n.eps == 1e-6 for n in norms)
    decayed = {id(p) for p in param_groups(model, 0.05)[0]["params"]}
    assert id(model.encoder[0].attn.q.weight) in decayed
    assert id(model.enc_token_emb["tok_rgb@224"].weight) not in decayed
    assert id(norms[0].weight) not in decayed


@pytest.mark.skipif(not os.environ.get("PRISM4M_TEST_RAY"), reason="starts a Ray cluster; set PRISM4M_TEST_RAY=1")
def test_ray_train_runs_two_workers(token_root, tmp_path):
    import ray

    from prism4m.trainer.train import train_with_ray

    root, tok = token_root
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        metrics = train_with_ray(config(root, tok, tmp_path, steps=2, data__eval_max_batches=1), num_workers=2)
    finally:
        ray.shutdown()
    assert metrics["step"] == 2 and math.isfinite(metrics["loss"])
    assert (tmp_path / "checkpoints" / "latest.pt").exists()


def test_job_spec_paths_resolve_relative_to_the_file(tmp_path):
    from prism4m.trainer.config import load_config

    spec = {"root": "../out/dataset", "train": {"data": {"modalities": ["tok_rgb@224"], "text_tokenizer": "tok"},
                                                "out_dir": "runs/x"}}
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    cfg = load_config(str(path))
    assert cfg.data.root == str(tmp_path / "out" / "dataset")
    assert cfg.data.text_tokenizer == str(tmp_path / "jobs" / "tok")
    assert cfg.out_dir == str(tmp_path / "jobs" / "runs" / "x")


def test_baseline_choice_decides_what_beats_means():
    from prism4m.trainer.evaluate import baseline_table

    rows = baseline_table({"caption": 3.0}, {"caption": 2.5}, {"caption": 4.0})
    assert rows[0]["beats_baseline"] is False  # default bar: training unigram entropy
    rows = baseline_table({"caption": 3.0}, {"caption": 2.5}, {"caption": 4.0}, "train_unigram_ce_on_val")
    assert rows[0]["beats_baseline"] is True
