"""The Python API: one function per `prism4m` command, with the command's name and options.

    from prism4m import api
    api.ingest("photos/", "s3://bucket/ds", shard_size=1000)
    api.label("s3://bucket/ds", ["canny_edge", "color_palette", "metadata"])
    print(api.status("s3://bucket/ds"))

Each function returns what its command reports; ``describe_<command>`` turns that into the
lines the command prints (prism4m.describe). Option mistakes are UserErrors named as the
command line spells them (``--compression``). Stages are imported on use: `api.status` on a
finished root pays for neither torch nor Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prism4m.describe import (describe_estimate, describe_export, describe_failures, describe_ingest,
                              describe_label, describe_labelers, describe_report, describe_status,
                              describe_tokenize, describe_tokenizer, describe_tokens_select,
                              describe_tokens_versions)
from prism4m.errors import UserError
from prism4m.pipeline.execute import WorkerStartupError
from prism4m.pipeline.ingest import IngestConfig, IngestSummary, ingest
from prism4m.pipeline.label import LabelSummary, PlanError, label
from prism4m.report.status import DatasetStatus, dataset_status as status

__all__ = [
    # the commands
    "ingest", "label", "status", "report", "estimate", "tokenizer_train", "tokenize", "export",
    "tokens_versions", "tokens_select", "train", "labelers", "run",
    # what they print
    "describe_ingest", "describe_label", "describe_status", "describe_report", "describe_estimate",
    "describe_tokenizer", "describe_tokenize", "describe_export", "describe_tokens_versions",
    "describe_tokens_select", "describe_labelers", "describe_failures",
    # types
    "IngestConfig", "IngestSummary", "LabelSummary", "DatasetStatus", "PlanError", "WorkerStartupError",
]


def report(root: str, out: str, *, samples: int = 16, tokenizers: list[str] | None = None, seed: int = 0,
           storage_options: dict | None = None) -> Path:
    """A static HTML report of ``root`` in ``out`` (index.html + assets/); returns the index's path."""
    from prism4m.report.html import build_report

    return build_report(root, out, n_samples=samples, tokenizers=tokenizers or None, seed=seed,
                        storage_options=storage_options)


def estimate(images: int, gpus: int, labelers: list[str] | None = None, root: str | None = None, *,
             cpus_per_gpu: int = 8, speedup: float = 1.0, bench: str | None = None,
             storage_options: dict | None = None):
    """Projected hours and GPU-hours to label ``images`` on ``gpus`` GPUs, from a pilot root's
    ledger or a benchmark JSON (prism4m.report.estimate)."""
    from prism4m.report.estimate import estimate as _estimate

    return _estimate(images, gpus, labelers, root, cpus_per_gpu=cpus_per_gpu, speedup=speedup,
                     bench_file=bench, storage_options=storage_options)


def tokenizer_train(root: str, modality: str, out: str, settings: dict[str, Any] | None = None, *,
                    storage_options: dict | None = None, show_progress: bool = True):
    """Train (or resume) a tokenizer of ``modality`` on ``root`` into ``out``; returns its card."""
    from prism4m.pipeline.tokenizer_training import train_tokenizer

    return train_tokenizer(root, modality, out, settings, progress=show_progress, storage_options=storage_options)


def tokenize(root: str, tokenizers: list[str], *, workers: int | None = None, force: bool = False,
             batch_size: int = 64, compression: str = "gzip", num_gpus: float = 0.0, ray_address: str | None = None,
             storage_options: dict | None = None, show_progress: bool = True):
    """Tokenize every committed shard of ``root`` with each tokenizer directory."""
    from prism4m.contract.store import shard_compression

    try:
        shard_compression(compression)
    except ValueError as exc:
        raise UserError(f"--compression: {exc}") from None
    from prism4m.pipeline.tokenize import tokenize as _tokenize

    return _tokenize(root, list(tokenizers), workers=workers, force=force, batch_size=batch_size,
                     compression=compression, num_gpus=num_gpus, ray_address=ray_address,
                     show_progress=show_progress, storage_options=storage_options)


EXPORT_FORMATS = ("parquet", "ml4m-sam")


def export(root: str, fmt: str = "parquet", out: str | None = None, *, storage_options: dict | None = None) -> dict:
    """The aligned token dataset in another format: one Parquet row per sample (``parquet``),
    or the SAM instance tokens in ml-4m's pickled layout (``ml4m-sam``)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    from prism4m.pipeline.export import export_ml4m_sam, export_parquet

    if fmt == "ml4m-sam":
        try:
            return export_ml4m_sam(root, out, storage_options=storage_options)
        except ValueError as exc:  # no/ambiguous token folder, misaligned shard: the user's to fix
            raise UserError(str(exc)) from None
    return export_parquet(root, out, storage_options=storage_options)


def tokens_versions(root: str, storage_options: dict | None = None) -> dict[str, list[dict]]:
    """Token folders and their kept versions (card hash, shards)."""
    from prism4m.pipeline.tokenize import token_versions

    return token_versions(root, storage_options)


def tokens_select(root: str, folder: str, card_hash: str, storage_options: dict | None = None) -> int:
    """Make a kept token version the one in the default folder; returns the shards swapped."""
    from prism4m.pipeline.tokenize import select_token_version

    return select_token_version(root, folder, card_hash, storage_options)


def train(config: str) -> bool:
    """Train a 4M model from a trainer YAML (or a job spec's ``train:`` section); False when the
    config requires beating every unigram baseline and a target modality missed it."""
    from prism4m.trainer.config import load_config
    from prism4m.trainer.train import required_baselines_met, train as _train

    cfg = load_config(config)
    return required_baselines_met(cfg, _train(cfg))


def labelers(config: str | None = None) -> list[tuple[str, ...]]:
    """(name, "module:Class") of every labeler this installation knows, or with ``config`` the
    settings of that labeler: (key, type, default, description)."""
    from prism4m.labelers.registry import available_labelers, config_table

    return sorted(available_labelers().items()) if config is None else config_table(config)


def run(job: str, show_progress: bool = True, echo: Callable[[str], Any] = print) -> bool:
    """Run every step of a job spec in order (prism4m.jobs), echoing each command's lines, then
    the status table; False when any unit failed (the others completed)."""
    from prism4m.jobs import load_job, run_job

    return run_job(load_job(job), show_progress=show_progress, echo=echo)
