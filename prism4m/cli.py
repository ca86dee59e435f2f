"""The `prism4m` command line. Each command parses its options, calls the prism4m.api function
of the same name and prints that function's ``api.describe_*`` lines; below the api, the CLI
imports only prism4m.errors (what a user mistake is).

Imports are lazy: `prism4m status` on a finished root must not pay for torch or Ray.
A mistake the user can fix (prism4m.errors.user_error_message) prints one line `error: …` and
exits 2 on every command; that is handled once, in `Prism4mGroup`, not per command.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from typer.core import TyperGroup

from prism4m.errors import UserError, refuse_file_root


#: the command-line parser's mistake class: typer ≥ 0.20 vendors click (typer._click), so it is
#: found through the public typer.BadParameter rather than a private import
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage_error(exc, fallback_path: str):
    if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `prism4m tokens`: its help was the answer
        raise exc
    where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else fallback_path
    typer.secho(f"error: {where}: {exc.format_message()} (see `{where} --help`)", fg=typer.colors.RED, err=True)
    raise typer.Exit(2) from None


class Prism4mGroup(TyperGroup):
    """Every command (sub-groups included) is parsed and run inside this group's invoke: user
    errors — a malformed command line included — become one line on stderr and exit code 2;
    anything else is a bug and keeps its traceback."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # the top level's own options (`prism4m --bogus`) are parsed here
            return super().make_context(info_name, args, parent, **extra)
        except _USAGE_ERRORS as exc:
            _usage_error(exc, info_name or "prism4m")

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _USAGE_ERRORS as exc:  # the parser's: missing argument, unknown option or command
            _usage_error(exc, ctx.command_path)
        except Exception as exc:
            from prism4m.errors import user_error_message

            message = user_error_message(exc)
            if message is None:
                raise
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=Prism4mGroup, add_completion=False, no_args_is_help=True,
                  help="Build aligned, pre-tokenized multimodal 4M datasets on Ray, and train on them.")


def _version(value: bool) -> None:
    if value:
        from prism4m import __version__

        typer.echo(f"prism4m {__version__}")
        raise typer.Exit()


@app.callback()
def _top(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit")) -> None:
    pass


def root_argument(help: str = "dataset root (local or s3://…)"):
    """ROOT of every command: a local regular file is refused before any work, naming it."""
    return typer.Argument(..., help=help, callback=refuse_file_root)


RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray cluster address ('auto' on a cluster); default: local Ray")
WORKERS = typer.Option(None, "--workers", "-w", min=1, help="actors per stage (default: as many as the cluster fits)")
QUIET = typer.Option(False, "--quiet", "-q", help="no progress lines")
STORAGE = typer.Option(None, "--storage-options", help='fsspec options of ROOT as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')
RETRIES = typer.Option(2, "--max-retries", help="attempts after the first for a failed or lost unit")


def _json_opt(text: Optional[str], name: str) -> Optional[dict]:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{name}: not valid JSON ({exc})")
    if not isinstance(value, dict):
        raise UserError(f"{name}: expected a JSON object")
    return value


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """`name.key=value` pairs → {name: {key: value}}; values parsed as YAML scalars."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--config {item!r}: expected LABELER.KEY=VALUE, e.g. canny_edge.low=50")
        lhs, value = item.split("=", 1)
        name, key = lhs.split(".", 1)
        out.setdefault(name, {})[key] = yaml.safe_load(value)
    return out


def parse_key_values(items: list[str]) -> dict:
    """`key=value` pairs → dict; values parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. max_seconds=60")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _echo(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


def _print_failures(stage: str, failures: list[dict]) -> None:
    from prism4m import api

    for line in api.describe_failures(stage, failures):
        typer.secho(line, fg=typer.colors.RED, err=True)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="folder, tar/WebDataset, Parquet or img2dataset output (local or s3://…)"),
    root: str = root_argument("dataset root to create or extend (local or s3://…)"),
    # Settings default to None: a root remembers the settings it was made with, and only a
    # setting the user actually typed may differ from them (ingest refuses a conflict).
    shard_size: Optional[int] = typer.Option(None, help="samples per shard [new root: 1000]"),
    short_side: Optional[int] = typer.Option(None, help="resize so the short side is this many pixels [new root: 512]"),
    jpeg_quality: Optional[int] = typer.Option(None, help="JPEG quality of rgb/ [new root: 90]"),
    jpeg_subsampling: Optional[str] = typer.Option(
        None, help="chroma subsampling of rgb/: auto (4:4:4 at quality >= 90, else 4:2:0), 4:4:4, 4:2:2 or 4:2:0 "
                   "(img2dataset's; ~30-40% smaller) [new root: auto]"),
    resize_filter: Optional[str] = typer.Option(
        None, help="resize filter to the short side: bicubic (the fastest), lanczos (sharper, slower) or hamming "
                   "(softer, slower; for roots made with it) [new root: bicubic]"),
    n_crops: Optional[int] = typer.Option(None, help="crop_settings rows per sample [new root: 5]"),
    seed: Optional[int] = typer.Option(None, help="seed of the crop draws [new root: 0]"),
    max_pixels: Optional[int] = typer.Option(None, help="refuse larger images (decompression-bomb guard) [new root: 89478485]"),
    min_side: Optional[int] = typer.Option(None, help="refuse images whose short side is smaller [new root: 32]"),
    dedup: Optional[bool] = typer.Option(None, "--dedup/--no-dedup", help="drop content duplicates [new root: --dedup]"),
    workers: Optional[int] = WORKERS,
    force: bool = typer.Option(False, help="recompute committed shards (with new settings, if given)"),
    ray_address: Optional[str] = RAY_ADDRESS,
    storage_options: Optional[str] = STORAGE,
    source_options: Optional[str] = typer.Option(None, "--source-options", help="fsspec options of SRC as JSON"),
    max_retries: int = RETRIES,
    quiet: bool = QUIET,
) -> None:
    """Ingest a corpus into keyed rgb/, source/ and crop_settings/ shards."""
    from prism4m import api

    summary = api.ingest(source, root, workers=workers, force=force, ray_address=ray_address,
                         storage_options=_json_opt(storage_options, "--storage-options"),
                         source_options=_json_opt(source_options, "--source-options"),
                         max_retries=max_retries, show_progress=not quiet, shard_size=shard_size, short_side=short_side,
                         jpeg_quality=jpeg_quality, jpeg_subsampling=jpeg_subsampling, resize_filter=resize_filter,
                         n_crops=n_crops, seed=seed,
                         max_pixels=max_pixels, min_side=min_side, dedup=dedup)
    _echo(api.describe_ingest(summary))
    if not summary.ok:  # failed units, or committed shards refused a recompute (kept as they were)
        _print_failures("ingest", summary.failures)
        raise typer.Exit(1)


@app.command()
def label(
    root: str = root_argument(),
    modalities: str = typer.Option(..., "--modalities", "-m", help="comma-separated labelers, e.g. canny_edge,color_palette,metadata"),
    config: list[str] = typer.Option([], "--config", "-c", help="LABELER.KEY=VALUE (repeatable)"),
    config_file: Optional[str] = typer.Option(None, "--config-file", help="YAML {labeler: {key: value}}"),
    workers: Optional[int] = WORKERS,
    force: bool = typer.Option(False, help="recompute every shard"),
    update_stale: bool = typer.Option(False, "--update-stale", help="recompute shards whose config or inputs changed"),
    retry_invalid: bool = typer.Option(False, "--retry-invalid",
                                       help="recompute only the invalid samples of committed shards (e.g. after a "
                                            "transient GPU error); valid samples keep their bytes"),
    overwrite_owned: bool = typer.Option(False, "--overwrite-owned",
                                         help="replace shards another producer wrote (e.g. the corpus's own captions)"),
    ray_address: Optional[str] = RAY_ADDRESS,
    storage_options: Optional[str] = STORAGE,
    max_retries: int = RETRIES,
    quiet: bool = QUIET,
) -> None:
    """Run pseudo-labelers as Ray actors over every committed rgb shard."""
    import yaml

    from prism4m import api

    configs: dict[str, dict] = {}
    if config_file:
        with open(config_file) as fh:
            configs = yaml.safe_load(fh) or {}  # a YAML error names the file (Prism4mGroup)
        if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
            raise UserError(f"{config_file}: expected a YAML mapping {{labeler: {{key: value}}}}")
    for name, kv in parse_overrides(config).items():
        configs.setdefault(name, {}).update(kv)
    mods = [m.strip() for m in modalities.split(",") if m.strip()]
    if not mods:
        raise UserError(f"--modalities {modalities!r}: no labeler named; e.g. -m canny_edge,color_palette "
                        f"(`prism4m labelers` lists them)")
    summary = api.label(root, mods, configs, workers=workers, force=force, update_stale=update_stale,
                        retry_invalid=retry_invalid, overwrite_owned=overwrite_owned, ray_address=ray_address,
                        show_progress=not quiet, max_retries=max_retries,
                        storage_options=_json_opt(storage_options, "--storage-options"))
    _echo(api.describe_label(summary))
    if summary.failures:
        _print_failures("label", summary.failures)
        raise typer.Exit(1)


@app.command()
def status(
    root: str = root_argument(),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    storage_options: Optional[str] = STORAGE,
) -> None:
    """Folder × {committed, stale, missing, failed} shards, samples, errors by reason."""
    from prism4m import api

    st = api.status(root, _json_opt(storage_options, "--storage-options"))
    _echo(api.describe_status(st, as_json=as_json))  # JSON shape: DatasetStatus.to_json


@app.command()
def report(
    root: str = root_argument(),
    out: str = typer.Option(..., "--out", "-o", help="output directory (index.html + assets/)"),
    samples: int = typer.Option(16, "--samples", "-n", help="samples in the gallery"),
    tokenizer: list[str] = typer.Option([], "--tokenizer", "-t", help="tokenizer dir whose reconstructions to show (repeatable)"),
    seed: int = typer.Option(0, help="which samples the gallery picks"),
) -> None:
    """A static HTML report: gallery of every modality, statistics, throughput, provenance, errors."""
    from prism4m import api

    _echo(api.describe_report(api.report(root, out, samples=samples, tokenizers=tokenizer or None, seed=seed)))


@app.command()
def estimate(
    images: int = typer.Option(..., "--images", min=0, help="corpus size to project"),
    gpus: int = typer.Option(..., "--gpus", min=1, help="GPUs available"),
    labelers: Optional[str] = typer.Option(None, "--labelers", help="comma-separated (default: all measured)"),
    root: Optional[str] = typer.Option(None, "--root", help="measure throughput from this root's ledger (a pilot run)"),
    cpus_per_gpu: int = typer.Option(8, "--cpus-per-gpu", min=1, help="CPU cores per GPU for CPU-only labelers"),
    speedup: float = typer.Option(1.0, "--speedup", help="assumed GPU speedup over the measured device"),
    bench: Optional[str] = typer.Option(None, "--bench", metavar="FILE",
                                        help="without --root: the benchmark JSON `make bench` writes "
                                             "[default: a prism4m checkout's benchmarks/results/latest.json]"),
) -> None:
    """Hours and GPU-hours to label a corpus, from measured throughput (assumptions printed)."""
    from prism4m import api

    names = [x.strip() for x in labelers.split(",") if x.strip()] if labelers else None
    _echo(api.describe_estimate(api.estimate(images, gpus, names, root, cpus_per_gpu=cpus_per_gpu, speedup=speedup,
                                             bench=bench)))


tokenizer_app = typer.Typer(no_args_is_help=True, help="Train and inspect tokenizers.")
app.add_typer(tokenizer_app, name="tokenizer")
tokens_app = typer.Typer(no_args_is_help=True, help="List and select kept token versions.")
app.add_typer(tokens_app, name="tokens")


@tokenizer_app.command("train")
def tokenizer_train(
    root: str = root_argument("dataset root with the modality labelled"),
    modality: str = typer.Option(..., "--modality", "-m",
                                 help="rgb, depth, normal, canny_edge, sam_edge, semseg_coco, clip, dinov2, imagebind, "
                                      "clip_global, dinov2_global, imagebind_global, sam_instance, "
                                      "human_poses or text"),
    out: str = typer.Option(..., "--out", "-o", help="tokenizer directory to write (an interrupted run of the same settings resumes; a finished tokenizer of other data or settings is refused)"),
    settings: list[str] = typer.Option([], "--set", "-s", help="TrainConfig KEY=VALUE, e.g. max_seconds=60 size=tiny"),
    storage_options: Optional[str] = STORAGE,
    quiet: bool = QUIET,
) -> None:
    """Train a tokenizer on a root's labels; periodic checkpoints, resumable; metrics in its card."""
    from prism4m import api

    card = api.tokenizer_train(root, modality, out, parse_key_values(settings), show_progress=not quiet,
                               storage_options=_json_opt(storage_options, "--storage-options"))
    _echo(api.describe_tokenizer(card, out))


@app.command()
def tokenize(
    root: str = root_argument(),
    tokenizer: list[str] = typer.Option(..., "--tokenizer", "-t", help="tokenizer directory (repeatable); or an ml-4m published tokenizer: its directory (config.json + model.safetensors), hub id, or NAME[:OPTION]=DIR (docs/DATASET.md)"),
    workers: Optional[int] = WORKERS,
    force: bool = typer.Option(False, help="re-tokenize committed shards"),
    batch_size: int = typer.Option(64, min=1, help="crops per encoder forward"),
    compression: str = typer.Option("gzip", help="token shards: gzip (a gzip'd tar under the usual .tar name; "
                                                 "tarfile, GNU tar and webdataset/ml-4m detect it) or none"),
    num_gpus: float = typer.Option(0.0, "--num-gpus", min=0.0, help="GPU fraction per actor: encoders run on CUDA and the "
                                                           "next samples are decoded while they encode"),
    ray_address: Optional[str] = RAY_ADDRESS,
    storage_options: Optional[str] = STORAGE,
    quiet: bool = QUIET,
) -> None:
    """Crop × label → int16 tokens in tok_<mod>@<res>/ shards; a new tokenizer re-tokenizes, no relabeling."""
    from prism4m import api

    summary = api.tokenize(root, list(tokenizer), workers=workers, force=force, batch_size=batch_size,
                           compression=compression, num_gpus=num_gpus, ray_address=ray_address,
                           show_progress=not quiet,
                           storage_options=_json_opt(storage_options, "--storage-options"))
    _echo(api.describe_tokenize(summary))
    if not summary.ok:
        _print_failures("tokenize", summary.failures)
        raise typer.Exit(1)


@app.command()
def export(
    root: str = root_argument(),
    fmt: str = typer.Option("parquet", "--format",
                            help="parquet (one row per sample) or ml4m-sam (sam_instance tokens as ml-4m's pickled npy)"),
    out: Optional[str] = typer.Option(None, "--out", "-o",
                                      help="output directory (default ROOT/_export/parquet or ROOT/_export/ml4m)"),
    storage_options: Optional[str] = STORAGE,
) -> None:
    """Write the aligned token dataset in another format (one Parquet row per sample, or
    ml-4m's own sam_instance layout)."""
    from prism4m import api

    _echo(api.describe_export(api.export(root, fmt, out, storage_options=_json_opt(storage_options, "--storage-options"))))


@tokens_app.command("versions")
def tokens_versions(root: str = root_argument(), storage_options: Optional[str] = STORAGE) -> None:
    """Token folders and their kept versions (card hash, shards)."""
    from prism4m import api

    _echo(api.describe_tokens_versions(api.tokens_versions(root, _json_opt(storage_options, "--storage-options"))))


@tokens_app.command("select")
def tokens_select(root: str = root_argument(), folder: str = typer.Argument(..., help="e.g. tok_rgb@224"),
                  card_hash: str = typer.Argument(..., help="card hash (or its first 8 characters)"),
                  storage_options: Optional[str] = STORAGE) -> None:
    """Make a kept token version the one in the default folder ml-4m reads."""
    from prism4m import api

    swapped = api.tokens_select(root, folder, card_hash, _json_opt(storage_options, "--storage-options"))
    _echo(api.describe_tokens_select(folder, card_hash, swapped))


@app.command()
def train(config: str = typer.Argument(..., help="trainer YAML (or a job spec with a train: section)")) -> None:
    """Train a 4M encoder-decoder straight from token shards; prints val loss vs unigram baselines."""
    from prism4m import api

    if not api.train(config):  # a required baseline was missed
        raise typer.Exit(1)


@app.command()
def labelers(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="show NAME's settings (same as --config)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", metavar="NAME",
                                         help="show NAME's settings: key, type, default, description"),
) -> None:
    """List the labelers this installation knows (built-ins and entry points), or one's settings."""
    from prism4m import api

    if name and config and name != config:
        raise UserError(f"labelers: two labelers named ({name!r} and --config {config!r}); give one")
    config = config or name
    _echo(api.describe_labelers(api.labelers(config), config))


@app.command()
def run(job: str = typer.Argument(..., help="job spec YAML (see jobs/)"), quiet: bool = QUIET) -> None:
    """Run every step of a job spec: ingest → label → …"""
    from prism4m import api

    if not api.run(job, show_progress=not quiet, echo=typer.echo):
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
