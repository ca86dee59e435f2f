"""The training loop: ``train(config)`` on one CPU, torchrun DDP or a Ray Train worker.

One step = one batch per rank. Build (build.py), resume (checkpoint.py), step, log,
checkpoint every N steps, evaluate every M; at the end the final checkpoint and the table of
per-target-modality validation loss beside its unigram baseline (evaluate.py).

Rank 0 prints a start line, a warning when any folder read (or the text tokenizer) comes
from random weights, ``resumed from step N`` when it continues a checkpoint, and progress.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from .build import Setup
from .checkpoint import Checkpoints
from .config import TrainConfig, validate_config
from .distributed import Dist, autocast, setup_distributed, to_device
from .evaluate import evaluate, format_table, validation_vs_baseline
from .optim import build_optimizer
from .progress import JsonlLog, Progress


def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Train (or resume) a 4M model; returns a summary with the baseline table.

    Launch with ``torchrun --nproc_per_node N`` for DDP; Ray Train: ``train_with_ray``.
    """
    cfg = config if isinstance(config, TrainConfig) else validate_config(config)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    ctx = setup_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, ctx: Dist) -> dict[str, Any]:
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
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids) if ctx.world > 1 else model
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.steps)
    loader = setup.train_loader(ctx.rank, ctx.world)
    log = JsonlLog(f"{cfg.out_dir.rstrip('/')}/log.jsonl" if ctx.is_main else None)
    checkpoints = Checkpoints(cfg.out_dir, ctx, model, optimizer, scheduler, loader, cfg.model_dump())
    step = 0
    resume_path = checkpoints.to_resume(cfg.resume, cfg.resume_from)
    if resume_path:
        step = checkpoints.load(resume_path)
        log.write({"event": "resumed", "step": step, "from": resume_path})
        say(f"train: resumed from step {step} ({resume_path})", flush=True)
    if flagged:
        log.write({"event": "random_weights", "folders": flagged})

    history: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    model.train()
    progress = Progress(cfg.steps, step, cfg.log_every, log, ctx.is_main)
    clip = cfg.optim.clip_grad
    if step < cfg.steps:
        for batch in loader:
            with autocast(ctx.device):
                loss, losses = wrapped(to_device(batch, ctx.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip) if clip else None
            optimizer.step()
            scheduler.step()
            step += 1
            record = {"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
            record.update({f"loss/{m}": float(v.detach()) for m, v in losses.items()})
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            history.append(record)
            progress.step(record, cfg.data.batch_size * ctx.world)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoints.save(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps and setup.eval_sources:
                val = evaluate(model, setup, ctx.device)
                evals.append({"step": step, **val})
                log.write({"event": "eval", "step": step, **{f"val/{m}": v for m, v in val.items()}})
            if step >= cfg.steps:
                break
        checkpoints.save(step)

    summary: dict[str, Any] = {"step": step, "history": history, "evals": evals, "num_parameters": model.num_parameters()}
    if setup.eval_sources:
        summary["table"] = table = validation_vs_baseline(model, setup, ctx.device)
        log.write({"event": "final_eval", "step": step, "table": table})
        if ctx.is_main and cfg.print_table:
            print(format_table(table), flush=True)
    summary["model"] = model
    return summary
