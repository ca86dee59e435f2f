"""Validation loss per target modality beside that modality's unigram baseline.

Evaluation is per target modality: for each modality one deterministic pass over the
held-out shards in which it is the only target (inputs drawn by the training mixture's
input alphas), so every modality gets a validation loss, however small the token budgets;
a modality that no held-out sample has is listed with that reason instead of a loss.

The bar a modality must beat: the unigram entropy of the training shards (the loss of a
model that ignores its inputs and predicts the marginal distribution), or that training
unigram's cross-entropy on the validation tokens (``baseline: train_unigram_ce_on_val``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .build import Setup
from .decode import CROP_FOLDER, SampleDecoder
from .distributed import autocast, to_device
from .model import FourM
from .shards import ShardSource, iter_shard


# -- unigram baselines ----------------------------------------------------------------------
def unigram_counts(
    sources: Sequence[ShardSource], decoder: SampleDecoder, max_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Token-id counts per modality: every crop row of token modalities, the tokenized text
    (EOS included) of sequences."""
    counts: dict[str, np.ndarray] = {n: np.zeros(s.vocab_size, dtype=np.int64) for n, s in decoder.registry.items()}
    rng = np.random.default_rng(0)
    seen = 0
    folders = decoder.folders() + ([CROP_FOLDER] if CROP_FOLDER in sources[0].urls else [])
    for source in sources:
        sub = ShardSource(source.index, {f: source.urls[f] for f in folders if f in source.urls}, source.invalid, kind=source.kind)
        for key, members in iter_shard(sub):
            for name, spec in decoder.registry.items():
                value = decoder._value(members.get(spec.folder), spec.folder, key, source.invalid)
                if value is None:
                    continue
                if spec.is_sequence:
                    ids = decoder._tokenize(spec, value, 0, None, rng)
                    if ids is None:
                        continue
                else:
                    ids = np.asarray(value, dtype=np.int64).ravel()
                counts[name] += np.bincount(ids, minlength=spec.vocab_size)[: spec.vocab_size]
            seen += 1
            if max_samples and seen >= max_samples:
                return counts
    return counts


def entropy_of_counts(counts: np.ndarray) -> float:
    """Entropy (nats) of the frequency distribution ``counts``."""
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one token's -0.0 reads as 0.0


def cross_entropy_of_counts(eval_counts: np.ndarray, train_counts: np.ndarray, smoothing: float = 1.0) -> float:
    """Mean -log p_train(token) over ``eval_counts``, with add-``smoothing`` p_train: what
    predicting the training unigram costs on other data (ids unseen in training included)."""
    p = (train_counts + smoothing) / (train_counts.sum() + smoothing * len(train_counts))
    return float(-(eval_counts * np.log(p)).sum() / max(eval_counts.sum(), 1))


# -- validation loss ------------------------------------------------------------------------
#: why a modality has no validation loss (baseline_table's ``reason``)
NOT_IN_HELD_OUT = "no held-out sample has it"
NO_TARGETS = "no target tokens drawn in the held-out pass"


@torch.no_grad()
def evaluate_targets(model: FourM, setup: Setup, device: torch.device) -> dict[str, dict[str, Any]]:
    """Per modality: mean CE over its tokens (token-weighted) in the held-out pass where it
    is the only target, the target tokens counted, and the held-out samples that have it."""
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    for name in setup.names:
        total, count, present = 0.0, 0, 0
        for batch in setup.eval_batches(setup.target_masker(name)):
            data = batch[name]
            present += int((data["input_mask"] | data["target_mask"]).any(1).sum())
            n = int(data["target_mask"].sum())
            if not n:
                continue
            batch = to_device(batch, device)
            with autocast(device):
                _, losses = model(batch)
            total += float(losses[name]) * n
            count += n
        out[name] = {"loss": total / count if count else None, "targets": count, "samples": present}
    model.train(was_training)
    return out


def evaluate(model: FourM, setup: Setup, device: torch.device) -> dict[str, float]:
    """Validation loss per target modality (those with target tokens; see evaluate_targets)."""
    return {m: r["loss"] for m, r in evaluate_targets(model, setup, device).items() if r["loss"] is not None}


def baseline_table(
    val_losses: Mapping[str, float | None],
    entropies: Mapping[str, float],
    val_unigram_ce: Mapping[str, float] | None = None,
    baseline: str = "train_entropy",
    reasons: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per modality of ``val_losses``; a None loss (``reasons[m]`` says why) does not
    beat its baseline."""
    rows = []
    for m, loss in val_losses.items():
        row = {"modality": m, "val_loss": loss, "unigram_entropy": entropies[m]}
        if val_unigram_ce is not None:
            row["train_unigram_ce_on_val"] = val_unigram_ce[m]
        bar = row["train_unigram_ce_on_val"] if baseline == "train_unigram_ce_on_val" else entropies[m]
        row["baseline"] = baseline
        row["beats_baseline"] = loss is not None and loss < bar
        if loss is None:
            row["reason"] = (reasons or {}).get(m, NO_TARGETS)
        rows.append(row)
    return rows


def validation_vs_baseline(model: FourM, setup: Setup, device: torch.device) -> list[dict[str, Any]]:
    """Per target modality: validation loss beside the unigram entropy of the training
    shards (the baseline to beat) and, for context, the cross-entropy of that training
    unigram on the validation tokens (higher when validation uses ids rare in training)."""
    decoder = setup.decoder(False)
    limit = setup.cfg.data.baseline_max_samples
    train_counts = unigram_counts(setup.train_sources, decoder, limit)
    val_counts = unigram_counts(setup.eval_sources, decoder, limit)
    entropies = {m: entropy_of_counts(c) for m, c in train_counts.items()}
    val_ce = {m: cross_entropy_of_counts(val_counts[m], train_counts[m]) for m in train_counts}
    results = evaluate_targets(model, setup, device)
    reasons = {m: NOT_IN_HELD_OUT if not r["samples"] else NO_TARGETS for m, r in results.items()}
    return baseline_table({m: r["loss"] for m, r in results.items()}, entropies, val_ce, setup.cfg.baseline, reasons)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'modality':<24} {'val loss':>9} {'unigram H':>10}  beats  {'train-unigram CE on val':>23}",
        "-" * 76,
    ]
    for r in rows:
        ce = r.get("train_unigram_ce_on_val")
        if r["val_loss"] is None:
            lines.append(f"{r['modality']:<24} {'-':>9} {r['unigram_entropy']:>10.3f}  {'NO':<5}  "
                         f"not evaluated: {r.get('reason', NO_TARGETS)}")
            continue
        lines.append(
            f"{r['modality']:<24} {r['val_loss']:>9.3f} {r['unigram_entropy']:>10.3f}  "
            f"{'yes' if r['beats_baseline'] else 'NO ':<5}  {'' if ce is None else f'{ce:>23.3f}'}"
        )
    return "\n".join(lines)
