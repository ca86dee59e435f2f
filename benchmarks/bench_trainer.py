"""Trainer benchmarks: loader vs training throughput, and masking budget accuracy.

``run(workdir)`` returns
- ``loader_over_train_ratio``: loader samples/s (2 workers, 4M-7-like token shards, 128/128
  masking) divided by tiny-model (6/6, 384) training samples/s on the same machine (goal >= 10);
- ``masking_budget_mean_error``: over 10,000 budget draws of the 4M-7 mixture, the largest
  relative gap between a modality's mean input/target budget and the Dirichlet expectation
  (goal <= 0.02), plus the figures behind both.

Standalone: ``python benchmarks/bench_trainer.py [WORKDIR]`` prints the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prism4m.contract.members import encode_json, encode_npy  # noqa: E402
from prism4m.contract.store import DatasetStore, Member  # noqa: E402
from prism4m.tokenizers.text import special_tokens, value_tokens  # noqa: E402
from prism4m.trainer.data import TokenLoader, TokenShardDataset  # noqa: E402
from prism4m.trainer.decode import SampleDecoder  # noqa: E402
from prism4m.trainer.masking import UnifiedMasker, all2all, dirichlet_expectation, mixture_4m7  # noqa: E402
from prism4m.trainer.modalities import build_registry  # noqa: E402
from prism4m.trainer.model import FourM  # noqa: E402
from prism4m.trainer.shards import discover_shards  # noqa: E402

IMAGE_MODALITIES = ["tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224"]
MODALITIES = IMAGE_MODALITIES + ["caption", "det"]
WORDS = ["a", "photo", "of", "dog", "cat", "on", "the", "grass", "red", "car", "street", "person"]


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = special_tokens() + value_tokens() + WORDS
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def write_bench_root(root: str, n_shards: int = 4, per_shard: int = 500, n_crops: int = 4) -> None:
    """A prism4m root with 4M-7-like token folders, captions and det JSON, committed by the store."""
    rng = np.random.default_rng(0)
    folders = IMAGE_MODALITIES + ["caption", "det", "crop_settings"]
    store = DatasetStore(root)
    for shard in range(n_shards):
        keys = [f"k{shard:03d}{i:05d}" for i in range(per_shard)]
        outputs = {}
        for folder in folders:
            members = []
            for key in keys:
                if folder == "caption":
                    members.append(Member(key, "txt", " ".join(rng.choice(WORDS, size=12)).encode()))
                elif folder == "det":
                    boxes = [{"boxes": sorted(rng.random(2).tolist()) * 2, "class_name": "car", "score": 0.9}] * 3
                    members.append(Member(key, "json", encode_json({"instances": boxes})))
                elif folder == "crop_settings":
                    members.append(Member(key, "npy", encode_npy(np.tile(np.array([[0, 0, 224, 224, 0]]), (n_crops, 1)))))
                else:
                    members.append(Member(key, "npy", encode_npy(rng.integers(0, 4096, size=(n_crops, 196)).astype(np.int16))))
            outputs[folder] = members
        producer = {"name": "bench", "kind": "bench", "config_hash": "bench", "code_version": "bench"}
        store.commit_unit(shard, outputs, {f: {"producer": producer, "inputs": {}} for f in folders})


def _registry(root: str, tokenizer):
    overrides = {m: {"vocab_size": tokenizer.get_vocab_size(), "num_tokens": 128} for m in ("caption", "det")}
    # The bench root records no tokenizer, and the trainer never guesses a vocabulary: the
    # generated ids are uniform over 4,096 codes (write_bench_root).
    overrides.update({m: {"vocab_size": 4096} for m in IMAGE_MODALITIES})
    return build_registry(MODALITIES, root, overrides)


def loader_throughput(root: str, tokenizer, workers: int = 2, batch_size: int = 64, batches: int = 60) -> float:
    registry = _registry(root, tokenizer)
    sources = discover_shards(root, [s.folder for s in registry.values()] + ["crop_settings"])
    masker = UnifiedMasker(registry, mixture_4m7(MODALITIES), 128, 128)
    dataset = TokenShardDataset(sources, SampleDecoder(registry, tokenizer), masker, batch_size, shuffle_buffer=1000)
    loader = TokenLoader(dataset, num_workers=workers)
    start = None
    for i, _ in enumerate(loader):
        if i == 2:  # after worker start-up and the shuffle buffer fill
            start = time.perf_counter()
        if i == batches + 2:
            break
    return batches * batch_size / (time.perf_counter() - start)


def train_throughput(root: str, tokenizer, batch_size: int = 16, steps: int = 4) -> float:
    registry = _registry(root, tokenizer)
    sources = discover_shards(root, [s.folder for s in registry.values()] + ["crop_settings"])
    masker = UnifiedMasker(registry, mixture_4m7(MODALITIES), 128, 128)
    dataset = TokenShardDataset(sources, SampleDecoder(registry, tokenizer), masker, batch_size, shuffle_buffer=0)
    batches = []
    for batch in TokenLoader(dataset):
        batches.append(batch)
        if len(batches) == steps + 1:
            break
    model = FourM(registry, "tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step(batch):
        loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return steps * batch_size / (time.perf_counter() - start)


def budget_accuracy(draws: int = 10_000, seed: int = 0) -> dict:
    """Measured mean budgets vs the Dirichlet expectation, 4M-7 mixture at 128/128."""
    registry = build_registry(MODALITIES)
    comps = mixture_4m7(MODALITIES)
    masker = UnifiedMasker(registry, comps, 128, 128)
    rng = np.random.default_rng(seed)
    budgets = [masker.sample_budgets(rng) for _ in range(draws)]
    result = {}
    worst, worst_z = 0.0, 0.0
    for kind, column in (("input", 1), ("target", 2)):
        values = np.array([b[column] for b in budgets], dtype=np.float64)
        expected = dirichlet_expectation(comps, MODALITIES, 128, kind)
        gaps = np.abs(values.mean(0) - expected) / expected
        standard_error = values.std(0) / np.sqrt(draws) / expected
        worst = max(worst, float(gaps.max()))
        worst_z = max(worst_z, float((gaps / standard_error).max()))
        result[kind] = {
            m: {"mean": round(float(values[:, i].mean()), 3), "expected": round(float(expected[i]), 3),
                "relative_gap": round(float(gaps[i]), 4), "relative_standard_error": round(float(standard_error[i]), 4)}
            for i, m in enumerate(MODALITIES)
        }
    # Same check where sampling noise is small (alpha 10): isolates bias from rounding/caps.
    low_noise = UnifiedMasker(registry, [all2all(MODALITIES, 10.0)], 128, 128)
    values = np.array([low_noise.sample_budgets(rng)[1] for _ in range(draws)], dtype=np.float64)
    expected = dirichlet_expectation(low_noise.components, MODALITIES, 128, "input")
    result["all2all_alpha10_input_max_relative_gap"] = round(float((np.abs(values.mean(0) - expected) / expected).max()), 4)
    # With alpha 0.5 a modality's budget has a relative standard error near 0.02 at 10,000
    # draws, so the largest of 14 gaps sits near 0.02-0.04 from sampling noise alone;
    # max_abs_z tells noise (|z| < ~3) from bias.
    result["max_abs_z"] = round(worst_z, 2)
    return {"masking_budget_mean_error": round(worst, 4), "budgets": result}


def run(workdir: str) -> dict:
    root = os.path.join(workdir, "bench_trainer_root")
    if not os.path.exists(os.path.join(root, "_ledger")):
        write_bench_root(root)
    tokenizer = _tokenizer()
    loader_sps = loader_throughput(root, tokenizer)
    train_sps = train_throughput(root, tokenizer)
    budgets = budget_accuracy()
    return {
        "loader_over_train_ratio": round(loader_sps / train_sps, 2),
        "loader_samples_per_s_2_workers": round(loader_sps, 1),
        "tiny_train_samples_per_s": round(train_sps, 2),
        "tiny_num_parameters": FourM(_registry(root, tokenizer), "tiny").num_parameters(),
        "torch_threads": torch.get_num_threads(),
        "masking_budget_mean_error": budgets["masking_budget_mean_error"],
        "masking_budget_draws": 10_000,
        "masking_budget_max_abs_z": budgets["budgets"]["max_abs_z"],
        "masking_budget_alpha10_input_max_relative_gap": budgets["budgets"]["all2all_alpha10_input_max_relative_gap"],
        "masking_budgets": budgets["budgets"],
    }


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bench_trainer_")
    print(json.dumps(run(directory), indent=2))
