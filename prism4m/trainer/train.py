"""`train(config)`: 4M pretraining from token shards, on one CPU, torchrun DDP or Ray Train.

One step = one batch per rank. The loop is deliberately plain (nanoGPT-style): build the
registry, loaders, model and optimizer; step; log per-modality losses to JSONL; checkpoint
every N steps (model, optimizer, scheduler, RNG states, loader position) and resume from
the newest checkpoint exactly; evaluate on held-out shards; finish with the table of
per-target-modality validation loss beside that modality's unigram-entropy baseline.

What rank 0 prints while it runs (stdout): a start line (steps, modalities, shards), a
warning when any training or held-out folder (or the text tokenizer) comes from random
weights, ``resumed from step N`` when it continues a checkpoint, and a progress line every
``log_every`` steps or ~10 s (``step 120/500  loss 4.213  12.3 steps/s  eta 33s``).

Evaluation is per target modality: for each modality one deterministic pass over the
held-out shards in which it is the only target (inputs drawn by the training mixture's
input alphas), so every modality gets a validation loss, however small the token budgets;
a modality that no held-out sample has is listed with that reason instead of a loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from typing import Any, Literal, Mapping

import fsspec
import numpy as np
import torch
import torch.distributed as dist
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism4m.errors import UserError, describe_validation_error

from .data import (
    CROP_FOLDER,
    SampleDecoder,
    TokenLoader,
    TokenShardDataset,
    discover_shards,
    load_text_tokenizer,
    cross_entropy_of_counts,
    entropy_of_counts,
    peek_num_tokens,
    random_weight_folders,
    text_tokenizer_card,
    unigram_counts,
)
from .masking import MIXTURES, AlphaComponent, UnifiedMasker
from .modalities import ModalitySpec, build_registry, with_overrides
from .model import MODEL_SIZES, FourM


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    root: str
    modalities: list[str]
    layout: Literal["auto", "prism4m", "ml4m", "parquet"] = "auto"
    text_tokenizer: str | None = None  # tokenizer.json (ml-4m WordPiece layout) for seq modalities
    eval_shards: list[int] = Field(default_factory=list)  # held out from training
    eval_root: str | None = None  # or a separate root (all of it is evaluation data)
    batch_size: int = 32
    num_workers: int = 2
    shuffle_buffer: int = 1000
    random_crop: bool = True
    eval_max_batches: int | None = None
    baseline_max_samples: int | None = 20000


class MaskingConfig(_Strict):
    num_input_tokens: int = 128
    num_target_tokens: int = 128
    min_input_tokens: int | None = None
    min_target_tokens: int | None = None
    mixture: Literal["4m7", "4m21", "all2all"] = "4m7"
    # Custom mixture instead: [{input_alphas: {mod: a}, target_alphas: {...}, keep: {...}, weight: w}]
    components: list[dict[str, Any]] | None = None


class ModelConfig(_Strict):
    size: str = "tiny"
    dim: int | None = None
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    heads: int | None = None


class OptimConfig(_Strict):
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = 1.0


class TrainConfig(_Strict):
    data: DataConfig
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    modality_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    steps: int = 1000
    seed: int = 0
    out_dir: str = "runs/4m"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate once at the end
    checkpoint_every: int = 0  # 0: only the final checkpoint
    resume: bool = True  # continue from out_dir/checkpoints/latest.pt when it exists
    resume_from: str | None = None  # or from this checkpoint file
    device: str = "auto"
    torch_threads: int | None = None
    print_table: bool = True
    require_beat_baseline: bool = False  # main() exits 1 when a modality misses its baseline
    # The bar for "beats": the unigram entropy of the training shards (default), or that
    # training unigram's cross-entropy on the validation tokens (fairer on tiny datasets,
    # where validation uses token ids the training shards barely contain).
    baseline: Literal["train_entropy", "train_unigram_ce_on_val"] = "train_entropy"


# -- distributed ----------------------------------------------------------------------------
class _Dist:
    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool) -> None:
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> _Dist:
    """Join torchrun's (env://) or Ray Train's process group when there is one."""
    owns = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world > 1:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.device != "auto":
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Dist(rank, world, device, owns)


# -- building blocks ------------------------------------------------------------------------
def build_components(cfg: MaskingConfig, names: list[str]) -> list[AlphaComponent]:
    if cfg.components:
        return [AlphaComponent(**c) for c in cfg.components]
    return MIXTURES[cfg.mixture](names)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay only matrix weights of linear layers: not norms, embeddings or positions."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = "token_emb" in name or "mod_emb" in name or "learned_pos" in name or "mask_token" in name
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Setup:
    """Everything derived from the config that both training and evaluation need."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        d = cfg.data
        tokenizer = load_text_tokenizer(d.text_tokenizer)
        overrides = {m: dict(v) for m, v in cfg.modality_overrides.items()}
        folders_guess = [overrides.get(m, {}).get("folder", m) for m in d.modalities]
        with_crops = folders_guess + [CROP_FOLDER]
        try:
            sources = discover_shards(d.root, with_crops, d.layout)
        except ValueError:  # a root without crop_settings (e.g. global tokens only)
            sources = discover_shards(d.root, folders_guess, d.layout)
        registry = build_registry(
            d.modalities, d.root, overrides, peek_num_tokens=lambda folder: peek_num_tokens(sources, folder)
        )
        for name, spec in registry.items():  # the tokenizer fixes sequence vocabularies
            if spec.is_sequence and tokenizer is not None and "vocab_size" not in overrides.get(name, {}):
                registry[name] = with_overrides(spec, vocab_size=tokenizer.get_vocab_size())
        self.registry: dict[str, ModalitySpec] = registry
        eval_set = set(d.eval_shards)
        self.train_sources = [s for s in sources if s.index not in eval_set]
        if d.eval_root:
            self.eval_sources = discover_shards(d.eval_root, list(sources[0].urls), d.layout)
        else:
            self.eval_sources = [s for s in sources if s.index in eval_set]
        if not self.train_sources:
            raise UserError(f"no training shards left in {d.root} after holding out {sorted(eval_set)}")
        self.names = list(self.registry)
        self.components = build_components(cfg.masking, self.names)
        self.masker = self._masker(self.components)
        self.tokenizer = tokenizer

    def _masker(self, components: list[AlphaComponent]) -> UnifiedMasker:
        m = self.cfg.masking
        return UnifiedMasker(
            self.registry, components, m.num_input_tokens, m.num_target_tokens, m.min_input_tokens, m.min_target_tokens
        )

    def target_masker(self, name: str) -> UnifiedMasker:
        """The training mixture's inputs, with every target token going to ``name``."""
        return self._masker([AlphaComponent(c.input_alphas, {name: 1.0}, c.keep, c.weight) for c in self.components])

    def random_weights(self) -> list[str]:
        """What this run reads that came from random weights: folders (ledger / export), and
        the text tokenizer when its card says it was trained on random-weight labels."""
        flagged = random_weight_folders(self.train_sources + self.eval_sources)
        card = text_tokenizer_card(self.cfg.data.text_tokenizer)
        if card.get("trained_on_random_weights") or card.get("random_weights"):
            flagged.append(f"text tokenizer {self.cfg.data.text_tokenizer}")
        return flagged

    def decoder(self, random_crop: bool) -> SampleDecoder:
        return SampleDecoder(self.registry, self.tokenizer, random_crop=random_crop)

    def model(self) -> FourM:
        mc = self.cfg.model
        if mc.size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {mc.size!r}; choose from {sorted(MODEL_SIZES)}")
        extra = {k: v for k, v in mc.model_dump().items() if k != "size" and v is not None}
        return FourM(self.registry, mc.size, **extra)

    def train_loader(self, rank: int, world: int) -> TokenLoader:
        d = self.cfg.data
        dataset = TokenShardDataset(
            self.train_sources, self.decoder(d.random_crop), self.masker, d.batch_size,
            seed=self.cfg.seed, shuffle_buffer=d.shuffle_buffer, repeat=True, rank=rank, world_size=world,
        )
        return TokenLoader(dataset, num_workers=d.num_workers)

    def eval_batches(self, masker: UnifiedMasker | None = None):
        """One deterministic pass over the held-out shards: crop 0, fixed masking seed."""
        d = self.cfg.data
        dataset = TokenShardDataset(
            self.eval_sources, self.decoder(False), masker or self.masker, d.batch_size,
            seed=self.cfg.seed + 7919, shuffle_buffer=0, repeat=False, shuffle_shards=False,
        )
        for i, batch in enumerate(TokenLoader(dataset, num_workers=0)):
            if d.eval_max_batches is not None and i >= d.eval_max_batches:
                return
            yield batch


def _to_device(batch, device: torch.device):
    return {m: {k: v.to(device, non_blocking=True) for k, v in d.items()} for m, d in batch.items()}


def _autocast(device: torch.device):
    # bf16 autocast on CUDA only; CPU bf16 is slow and changes test numerics.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


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
            batch = _to_device(batch, device)
            with _autocast(device):
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


# -- checkpoints ----------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    # Only tensors, ints and tuples, so checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **state: Any) -> None:
    """Write to a temporary name, then move: a killed run never leaves a half checkpoint."""
    fs, p = fsspec.core.url_to_fs(path)
    fs.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.tmp"
    with fs.open(tmp, "wb") as f:
        torch.save(state, f)
    fs.mv(tmp, p)


def load_checkpoint(path: str) -> dict[str, Any]:
    with fsspec.open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _exists(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


class _JsonlLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        if path:
            fs, p = fsspec.core.url_to_fs(path)
            fs.makedirs(os.path.dirname(p), exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path:
            with fsspec.open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# -- the loop -------------------------------------------------------------------------------
def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Train (or resume) a 4M model; returns a summary with the baseline table.

    Launch with ``torchrun --nproc_per_node N`` for DDP; Ray Train: ``train_with_ray``.
    """
    cfg = config if isinstance(config, TrainConfig) else validate_config(config)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    ctx = _setup_distributed(cfg)
    try:
        return _train(cfg, ctx)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def validate_config(raw: Mapping[str, Any], where: str = "train config") -> TrainConfig:
    """A TrainConfig, or a UserError naming the bad key in prism4m's words
    (``where: key.path: what was wrong``)."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{where}: {describe_validation_error(exc, '')}") from None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Progress:
    """Rank 0's progress lines: every ``every`` steps, at the last step, and at least every
    ``interval_s`` seconds (a slow run still shows it is alive)."""

    def __init__(self, total: int, start: int, every: int, enabled: bool, interval_s: float = 10.0) -> None:
        self.total, self.every, self.enabled, self.interval_s = total, every, enabled, interval_s
        self.last_step, self.last_t = start, time.perf_counter()

    def step(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        due = step == self.total or (self.every and step % self.every == 0) or now - self.last_t >= self.interval_s
        if not (self.enabled and due):
            return
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(f"step {step}/{self.total}  loss {loss:.3f}  {rate:.1f} steps/s  eta "
              f"{_duration(eta) if math.isfinite(eta) else '?'}", flush=True)
        self.last_step, self.last_t = step, now


def _train(cfg: TrainConfig, ctx: _Dist) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    setup = Setup(cfg)
    say = print if ctx.is_main else (lambda *a, **k: None)
    say(f"train: {cfg.steps} steps of batch {cfg.data.batch_size} x {ctx.world} rank(s) on {ctx.device}; "
        f"modalities {', '.join(setup.names)}; {len(setup.train_sources)} training shards, "
        f"{len(setup.eval_sources)} held out; out {cfg.out_dir}", flush=True)
    flagged = setup.random_weights()
    if flagged:
        say(f"warning: training on data from random weights: {', '.join(flagged)} [RANDOM WEIGHTS]; "
            "this run tests the pipeline, its model learns nothing real", flush=True)
    model = setup.model().to(ctx.device)
    wrapped: torch.nn.Module = model
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    min_ratio = o.min_lr / o.lr if o.lr else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, o.warmup_steps, cfg.steps, min_ratio)
    )
    loader = setup.train_loader(ctx.rank, ctx.world)
    out = cfg.out_dir.rstrip("/")
    latest = f"{out}/checkpoints/latest.pt"
    log = _JsonlLog(f"{out}/log.jsonl" if ctx.is_main else None)
    step = 0
    resume_path = cfg.resume_from or (latest if cfg.resume and _exists(latest) else None)
    if resume_path:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"][ctx.rank] if isinstance(state["loader"], list) else state["loader"])
        _set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
        step = int(state["step"])
        log.write({"event": "resumed", "step": step, "from": resume_path})
        say(f"train: resumed from step {step} ({resume_path})", flush=True)
    if flagged:
        log.write({"event": "random_weights", "folders": flagged})

    def checkpoint() -> None:
        # Loader positions and RNG states differ per rank: gather them so any rank resumes.
        loaders, rngs = [loader.state_dict()], [_rng_state()]
        if ctx.world > 1:
            loaders, rngs = [None] * ctx.world, [None] * ctx.world
            dist.all_gather_object(loaders, loader.state_dict())
            dist.all_gather_object(rngs, _rng_state())
        if ctx.is_main:
            state = dict(
                step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), loader=loaders, rng=rngs, config=cfg.model_dump(),
            )
            save_checkpoint(f"{out}/checkpoints/step-{step:08d}.pt", **state)
            save_checkpoint(latest, **state)
        if ctx.world > 1:
            dist.barrier()

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    model.train()
    tick, samples = time.perf_counter(), 0
    progress = _Progress(cfg.steps, step, cfg.log_every, ctx.is_main)
    if step < cfg.steps:
        for batch in loader:
            batch = _to_device(batch, ctx.device)
            with _autocast(ctx.device):
                loss, losses = wrapped(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad) if o.clip_grad else None
            optimizer.step()
            scheduler.step()
            step += 1
            samples += cfg.data.batch_size * ctx.world
            record = {"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
            record.update({f"loss/{m}": float(v.detach()) for m, v in losses.items()})
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            history.append(record)
            progress.step(step, record["loss"])
            if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                elapsed = time.perf_counter() - tick
                log.write({**record, "samples_per_s": samples / max(elapsed, 1e-9)})
                tick, samples = time.perf_counter(), 0
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and setup.eval_sources:
                val = evaluate(model, setup, ctx.device)
                evals.append({"step": step, **val})
                log.write({"event": "eval", "step": step, **{f"val/{m}": v for m, v in val.items()}})
            if step >= cfg.steps:
                break
        checkpoint()
    summary: dict[str, Any] = {"step": step, "history": history, "evals": evals, "num_parameters": model.num_parameters()}
    if setup.eval_sources:
        table = validation_vs_baseline(model, setup, ctx.device)
        summary["table"] = table
        log.write({"event": "final_eval", "step": step, "table": table})
        if ctx.is_main and cfg.print_table:
            print(format_table(table), flush=True)
    summary["model"] = model
    return summary


def _relative_to(base: str, value: str | None) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def config_from_dict(raw: Mapping[str, Any], base_dir: str | None = None, default_root: str | None = None,
                     where: str = "train config") -> TrainConfig:
    """A TrainConfig from a mapping such as a job spec's ``train:`` section.

    Relative local paths (data.root, data.eval_root, data.text_tokenizer, out_dir,
    resume_from) are resolved against ``base_dir``; ``default_root`` fills a missing
    data.root (a job spec's dataset root).
    """
    raw = dict(raw)
    data = dict(raw.get("data", {}))
    if default_root is not None:
        data.setdefault("root", default_root)
    if base_dir is not None:
        for key in ("root", "eval_root", "text_tokenizer"):
            if data.get(key) is not None:
                data[key] = _relative_to(base_dir, data[key])
        for key in ("out_dir", "resume_from"):
            if raw.get(key):
                raw[key] = _relative_to(base_dir, raw[key])
    raw["data"] = data
    return validate_config(raw, where)


def load_config(path: str) -> TrainConfig:
    """Read a YAML config: a TrainConfig, or a job spec with a ``train:`` section (whose
    top-level ``root`` is the default dataset). Relative paths are relative to the file."""
    with fsspec.open(path, "r") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("train", raw), dict):
        raise UserError(f"{path}: expected a YAML mapping (a trainer config, or a job spec with a train: section)")
    section = raw.get("train", raw)
    default_root = raw.get("root") if "train" in raw else None
    base_dir = None if "://" in path else os.path.dirname(os.path.abspath(path))
    return config_from_dict(section, base_dir, default_root, f"{path}{' (train:)' if 'train' in raw else ''}")


def required_baselines_met(cfg: TrainConfig, summary: Mapping[str, Any]) -> bool:
    """False when the config requires beating every baseline and a target modality missed."""
    return not cfg.require_beat_baseline or all(r["beats_baseline"] for r in summary.get("table") or [])


def main(config_path: str) -> int:
    """Entry point for ``prism4m train CONFIG`` (YAML, optionally under a ``train:`` key)."""
    cfg = load_config(config_path)
    return 0 if required_baselines_met(cfg, train(cfg)) else 1


# -- Ray Train ------------------------------------------------------------------------------
def _ray_train_loop(config: dict[str, Any]) -> None:
    import ray.train

    summary = train(config)
    metrics = {"step": summary["step"]}
    if summary["history"]:
        metrics["loss"] = summary["history"][-1]["loss"]
    for row in summary.get("table", []):
        metrics[f"val/{row['modality']}"] = row["val_loss"]
    ray.train.report(metrics)


def train_with_ray(config: TrainConfig | Mapping[str, Any], num_workers: int = 2, use_gpu: bool = False) -> dict[str, Any]:
    """Run `train` on ``num_workers`` Ray Train workers (one process group across nodes).

    Ray Train creates the torch process group; `train` joins it. Needs a running Ray
    cluster (``ray.init(address=...)``) or starts a local one.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = config if isinstance(config, TrainConfig) else validate_config(config)
    out = cfg.out_dir if "://" in cfg.out_dir else os.path.abspath(cfg.out_dir)
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config=cfg.model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=f"{out}/ray", name="train"),  # our checkpoints stay in out_dir
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    # Ray Train v2 keeps metrics only next to Ray checkpoints; ours live in out_dir, so
    # read the run's outcome back from rank 0's log there.
    summary: dict[str, Any] = dict(result.metrics or {})
    with fsspec.open(f"{cfg.out_dir.rstrip('/')}/log.jsonl", "r") as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    if steps:
        summary.update(step=steps[-1]["step"], loss=steps[-1]["loss"])
    finals = [r for r in records if r.get("event") == "final_eval"]
    if finals:
        summary["table"] = finals[-1]["table"]
    return summary
