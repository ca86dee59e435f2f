"""The tokenize stage: crops × labels → ``tok_<mod>@<res>/shard-%06d.tar`` on Ray actors.

For every committed rgb shard and every tokenizer, each sample's label is cut with each of
its crop_settings rows, normalised and encoded in batches (the tokenizer's ``prepare_sample``
and ``encode``); members, provenance, resume and kept token versions are as DATASET.md
("Token shards") says. Units are shards; one actor runs all tokenizers of a shard, reading
rgb/ and crop_settings/ once, and commits all their folders with one
``DatasetStore.commit_unit``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
from pydantic import ValidationError

from prism4m import __version__
from prism4m.contract.manifest import update_manifest
from prism4m.contract.members import encode_npy
from prism4m.contract.modalities import VERSION_SEP
from prism4m.contract.store import (DatasetStore, Member, absolute_url, content_hash, producer_hash,
                                    shard_compression)
from prism4m.errors import UserError, describe_validation_error
from prism4m.modality.samples import iter_shard_inputs
from prism4m.modality.specs import SPECS
from prism4m.pipeline.execute import RunReport
from prism4m.pipeline.prefetch import prefetched
from prism4m.pipeline.stage import StageSummary, finish_stage, run_stage_units
from prism4m.tokenizers.card import CARD_FILE, MAX_VOCAB, read_card
from prism4m.tokenizers.fourm.adapter import OfficialRequest, parse_request
from prism4m.tokenizers.fourm.load import looks_like_hub_id
from prism4m.tokenizers.registry import load_tokenizer

#: bump when the same tokenizer would write different tokens (crop/normalise code changes)
TOKENIZE_VERSION = "1"
INPUT_FOLDERS = ("rgb", "crop_settings")


@dataclass(frozen=True)
class TokenizeJob:
    """One tokenizer of a run: where it lives and where its tokens go."""

    url: str
    folder: str
    producer: dict
    source_folder: str
    official: OfficialRequest | None = None  # a published ml-4m tokenizer (no card of ours)

    @property
    def producer_hash(self) -> str:
        return producer_hash(self.producer)

    def load(self, device: str = "cpu"):
        return self.official.load(device) if self.official is not None else load_tokenizer(self.url, device=device)


@dataclass(frozen=True)
class TokenizeUnit:
    shard: int
    jobs: tuple[int, ...]  # indices into the run's job list


@dataclass
class TokenizeSummary(StageSummary):
    stale: dict[str, int] = field(default_factory=dict)     # folder → recomputed because stale

    @property
    def report(self) -> RunReport | None:
        return self.reports[0] if self.reports else None


def tokenizer_producer(card, folder: str) -> dict:
    sizes = {"vocab_size": card.vocab_size, "n_tokens": card.n_tokens}
    if card.n_tokens is None:
        # Tokens per SAM instance / person end up in a text sequence: the folder's vocabulary is
        # the text tokenizer's, so readers (the trainer's registry) must not take the codebook's.
        sizes = {"instance_codes": card.vocab_size, "tokens_per_instance": int(np.prod(card.token_grid or [0]))}
    if card.training.get("official_id"):  # a published ml-4m tokenizer: which one, and its exact weights
        sizes.update(official_id=card.training["official_id"], weights_sha256=card.weights.get("sha256"))
    return {"kind": "tokenizer", "name": folder, "type": card.type, "modality": card.modality,
            "card_hash": card.card_hash(), **sizes, "version": TOKENIZE_VERSION, "code_version": __version__}


def _carried_record(rec: dict) -> dict:
    """The ledger fields a shard keeps when it is recommitted under another folder name
    (kept versions, restores): what produced it, from what, its invalid keys, its compression,
    whether it came from random weights."""
    return {k: rec[k] for k in ("producer", "inputs", "invalid", "compression", "random_weights") if k in rec}


def version_folder(folder: str, card_hash: str) -> str:
    return f"{folder}{VERSION_SEP}{card_hash[:8]}"


class CropBatchEncoder:
    """Encodes samples' crop stacks in batches of about ``batch_size`` crops; tokens by key.

    Shared by the tokenize stage and the benchmark's bare loop, so both do the same work."""

    def __init__(self, tok, batch_size: int):
        self.tok, self.batch_size = tok, batch_size
        self.tokens: dict[str, np.ndarray] = {}
        self.encode_s = 0.0
        self._pending: list[tuple[str, int]] = []  # (key, n_crops) waiting in the buffer
        self._buf: list[np.ndarray] = []
        self._n = 0

    def add(self, key: str, crops: np.ndarray) -> None:
        self._buf.append(crops)
        self._pending.append((key, len(crops)))
        self._n += len(crops)
        if self._n >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        t = time.perf_counter()
        # instance tokenizers may have nothing to encode (no instance survived the crops)
        ids = self.tok.encode(np.concatenate(self._buf)) if self._n else np.zeros((0, 0), np.int64)
        self.encode_s += time.perf_counter() - t
        at = 0
        for key, n in self._pending:
            self.tokens[key] = ids[at:at + n].astype(np.int16)
            at += n
        self._pending.clear()
        self._buf.clear()
        self._n = 0


def token_member(key: str, tokens: np.ndarray | None, tok=None, layout=None) -> Member:
    """The tokenizer's member (default KEY.npy int16 (n_crops, n_tokens)); zero bytes when the
    input was invalid. ``layout``: what ``tok.prepare_sample`` returned besides the inputs."""
    ext = tok.member_ext if tok is not None else "npy"
    if tokens is None:
        return Member(key, ext, b"")
    data = tok.member_bytes(tokens, layout) if tok is not None else encode_npy(np.asarray(tokens).astype(np.int16))
    return Member(key, ext, data)


def _encode_shard(store: DatasetStore, tok, index: int, batch_size: int, cache: dict,
                  prefetch: int = 0) -> tuple[list[Member], list[dict], float]:
    """Token members of one shard for one tokenizer, plus error lines and encoder seconds.

    ``prefetch`` samples are read, decoded and cropped ahead in a thread while the encoder
    runs (the same members, in the same order, as without)."""
    keys: list[str] = []
    errors: list[dict] = []
    layouts: dict[str, object] = {}
    enc = CropBatchEncoder(tok, batch_size)
    for s in prefetched(iter_shard_inputs(store, tok.spec, index, cache), prefetch):
        keys.append(s.key)
        error = s.error
        if s.value is not None:
            try:
                inputs, layouts[s.key] = tok.prepare_sample(s.value, s.rows, s.image_hw, s.region)
            except Exception as exc:  # noqa: BLE001 - a label that cannot be cropped must not sink the shard
                error = f"{type(exc).__name__}: {exc}"
            else:
                enc.add(s.key, inputs)
                continue
        reason = "input_invalid" if error == "invalid_label" else "decode_error"
        errors.append({"key": s.key, "reason": reason, "message": f"{tok.spec.folder}/{s.key}: {error}"})
    enc.flush()
    members = [token_member(k, enc.tokens.get(k), tok, layouts.get(k)) for k in keys]
    return members, errors, enc.encode_s


class TokenizeWorker:
    """A Ray actor holding every tokenizer of the run (loaded once) and doing shard units."""

    def __init__(self, store: DatasetStore, jobs: list[TokenizeJob], batch_size: int, threads: int,
                 compression: str | None = "gzip", device: str = "cpu", prefetch: int | None = None):
        self.store, self.jobs, self.batch_size, self.threads = store, jobs, batch_size, threads
        self.compression = compression
        self.device = device
        # Streaming keeps a GPU busy while the CPU decodes; on a CPU it only adds a thread
        # competing with the encoder's own (unless asked for).
        self.prefetch = (4 * batch_size if device.startswith("cuda") else 0) if prefetch is None else prefetch
        self.tokenizers: list = []

    def ready(self) -> bool:
        import torch  # in the actor only: the driver never loads a model

        torch.set_num_threads(max(1, self.threads))
        self.tokenizers = [j.load(self.device) for j in self.jobs]
        return True

    def process(self, unit: TokenizeUnit) -> dict:
        t0 = time.perf_counter()
        store, index = self.store, unit.shard
        cache: dict[str, list] = {}
        outputs: dict[str, list[Member]] = {}
        records: dict[str, dict] = {}
        errors: dict[str, list[dict]] = {}
        encode_s = 0.0
        ledgers = {f: store.ledger_path(f, index) for f in INPUT_FOLDERS}
        inputs_rec = {f: store.read_json(p) for f, p in ledgers.items()}
        for j in unit.jobs:
            job, tok = self.jobs[j], self.tokenizers[j]
            src = inputs_rec.get(job.source_folder) or store.read_json(store.ledger_path(job.source_folder, index))
            inputs = {f: content_hash(r) for f, r in {**inputs_rec, job.source_folder: src}.items()}
            old = store.record(job.folder, index)
            if old is not None and old.get("producer", {}).get("card_hash") != job.producer["card_hash"] \
                    and old.get("producer", {}).get("kind") == "tokenizer":
                keep = version_folder(job.folder, old["producer"]["card_hash"])
                if store.record(keep, index) is None or \
                        store.record(keep, index).get("producer_hash") != old.get("producer_hash"):
                    outputs[keep] = store.read_shard(job.folder, index)
                    records[keep] = _carried_record(old)
                    errors[keep] = store.shard_errors(job.folder, index)
            kept = store.record(version_folder(job.folder, job.producer["card_hash"]), index)
            if kept is not None and kept.get("producer_hash") == job.producer_hash and kept.get("inputs") == inputs:
                # this tokenizer's tokens were kept when it was replaced: restore, don't re-encode
                vf = version_folder(job.folder, job.producer["card_hash"])
                members, errs = store.read_shard(vf, index), store.shard_errors(vf, index)
            else:
                members, errs, secs = _encode_shard(store, tok, index, self.batch_size, cache, self.prefetch)
                encode_s += secs
            outputs[job.folder] = members
            # Tokens are only as real as what made them: the tokenizer (untrained, or trained on
            # random-weight labels) and every record read (a random-weight label, say).
            random_weights = tok.card.from_random_weights or any(
                bool(r.get("random_weights")) for r in (*inputs_rec.values(), src))
            records[job.folder] = {"producer": job.producer, "inputs": inputs, "compression": self.compression,
                                   "random_weights": random_weights,
                                   "wall_s": round(time.perf_counter() - t0, 4)}
            errors[job.folder] = errs
        store.commit_unit(index, outputs, records, errors)
        n = len(next(iter(outputs.values()))) if outputs else 0
        return {"samples": n, "shard": index, "folders": [self.jobs[j].folder for j in unit.jobs],
                "invalid": sum(len(e) for f, e in errors.items() if VERSION_SEP not in f),
                "encode_s": encode_s, "wall_s": time.perf_counter() - t0}


def make_jobs(tokenizer_dirs: list[str], folders: dict[str, str] | None = None) -> list[TokenizeJob]:
    """Read each card (no weights) and decide the output folder and producer.

    A directory (or hub id) holding a published ml-4m tokenizer — ``config.json`` +
    ``model.safetensors``, no card — is accepted as well, optionally as
    ``NAME[:OPTION]=LOCATION`` (prism4m.tokenizers.fourm.adapter.parse_request); its card is
    made from its config and the weights' sha256."""
    jobs = []
    for given in tokenizer_dirs:
        official = parse_request(given)
        if official is not None:
            # workers load it: a relative dir means nothing in their cwd
            if not looks_like_hub_id(official.location):
                official = replace(official, location=absolute_url(official.location))
            url, card = official.location, official.card()
        else:
            url = absolute_url(given)
            card = read_tokenizer_card(url)
        if card.type == "wordpiece":
            raise UserError(f"--tokenizer {url}: a text (WordPiece) tokenizer; tokenize takes image, feature, "
                            "instance and pose tokenizers; text is tokenized by the trainer (data.text_tokenizer)")
        if card.vocab_size > MAX_VOCAB:
            raise UserError(f"--tokenizer {url}: vocabulary {card.vocab_size} does not fit int16 token files "
                            f"(at most {MAX_VOCAB})")
        spec = SPECS.get(card.modality)
        if spec is None:
            raise UserError(f"--tokenizer {url}: modality {card.modality!r} has no tokenize spec; "
                            f"known: {', '.join(sorted(SPECS))}")
        folder = (folders or {}).get(given) or (folders or {}).get(url) or card.token_folder or spec.token_folder(card.input_size)
        jobs.append(TokenizeJob(url, folder, tokenizer_producer(card, folder), spec.folder, official))
    names = [j.folder for j in jobs]
    if len(set(names)) != len(names):
        raise UserError(f"two tokenizers write the same folder: {names}")
    return jobs


def read_tokenizer_card(url: str):
    """A tokenizer directory's card, or a UserError naming the directory and what is wrong."""
    try:
        return read_card(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"--tokenizer {url}: not a tokenizer directory (no {CARD_FILE}; "
                        "make one with `prism4m tokenizer train`)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--tokenizer {url}: {CARD_FILE} is not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise UserError(f"--tokenizer {url}: {CARD_FILE}: {describe_validation_error(exc, '')}") from None


def plan_tokenize(store: DatasetStore, jobs: list[TokenizeJob], force: bool = False) -> tuple[list[TokenizeUnit], TokenizeSummary]:
    rgb = store.ledger("rgb")
    if not rgb:
        raise UserError(f"{store.url}: no committed rgb shards; run `prism4m ingest` first")
    crops = store.ledger("crop_settings")
    records = {f: store.ledger(f) for f in {j.folder for j in jobs} | {j.source_folder for j in jobs}}
    unlabelled = sorted({j.source_folder for j in jobs if not records[j.source_folder]})
    if unlabelled:  # nothing to tokenize is a mistake, not "up to date"
        raise UserError(f"{store.url}: {', '.join(unlabelled)} has no committed shard to tokenize; "
                        f"label it first (`prism4m label ROOT -m {','.join(unlabelled)}`)")
    summary = TokenizeSummary()
    todo: dict[int, list[int]] = defaultdict(list)
    for ji, job in enumerate(jobs):
        for s in sorted(rgb):
            src = records[job.source_folder].get(s)
            if src is None or s not in crops:
                continue  # label not committed (yet): nothing to tokenize for this shard
            rec = records[job.folder].get(s)
            inputs_now = {"rgb": content_hash(rgb[s]), "crop_settings": content_hash(crops[s]),
                          job.source_folder: content_hash(src)}
            if rec is not None and not force:
                if rec.get("producer_hash") == job.producer_hash and rec.get("inputs") == inputs_now:
                    summary.count(summary.skipped, job.folder)
                    continue
                summary.count(summary.stale, job.folder)
            todo[s].append(ji)
            summary.count(summary.planned, job.folder)
    return [TokenizeUnit(s, tuple(js)) for s, js in sorted(todo.items())], summary


def tokenize(root: str, tokenizer_dirs: list[str] | str, *, workers: int | None = None, force: bool = False,
             folders: dict[str, str] | None = None, batch_size: int = 64, num_cpus: float = 1.0,
             ray_address: str | None = None, storage_options: dict | None = None, show_progress: bool = True,
             max_retries: int = 2, compression: str | None = "gzip", num_gpus: float = 0.0,
             prefetch: int | None = None) -> TokenizeSummary:
    """Tokenize every committed shard of ``root`` with each tokenizer directory (path or URL).

    ``compression``: "gzip" (default) writes each token shard as a gzip'd tar under the usual
    ``shard-%06d.tar`` name (readers detect it; tokens take ~0.7x their int16 size instead of
    ~1.6x for small per-sample members); None or "none" writes plain tars (e.g. for
    random-access tools).

    Skips shards whose ledger matches the tokenizer's card hash and the inputs read; a
    different tokenizer re-tokenizes (keeping the replaced tokens: DATASET.md, "Token versions").
    ``workers`` actors (default: as many as the cluster holds), each with ``num_cpus`` CPUs
    and as many torch threads, and ``num_gpus`` of a GPU: the encoders then run on CUDA and
    ``prefetch`` samples (default 4 batches with a GPU, none without) are decoded and cropped
    ahead while they encode. Returns a summary; failed shards are in ``summary.failures``.
    """
    if isinstance(tokenizer_dirs, str):
        tokenizer_dirs = [tokenizer_dirs]
    compression = shard_compression(compression)
    store = DatasetStore(root, storage_options)
    jobs = make_jobs([str(d) for d in tokenizer_dirs], folders)
    units, summary = plan_tokenize(store, jobs, force=force)
    if units:
        from prism4m.pipeline.ray_env import cluster_gpus, ensure_ray

        summary.ray_start_s = ensure_ray(ray_address)
        num_gpus = num_gpus if cluster_gpus() > 0 else 0.0  # none on the cluster: encode on CPU
        run_stage_units(store, summary, units, TokenizeWorker,
                        (store, jobs, batch_size, int(max(1, num_cpus)), compression,
                         "cuda" if num_gpus > 0 else "cpu", prefetch),
                        desc="tokenize " + "+".join(j.folder for j in jobs),
                        writes=lambda u: [jobs[j].folder for j in u.jobs], ray_address=ray_address,
                        workers=workers, max_retries=max_retries, show_progress=show_progress, num_cpus=num_cpus,
                        num_gpus=num_gpus)
    finish_stage(store, summary, changed=bool(units))
    return summary


def token_versions(root: str, storage_options: dict | None = None) -> dict[str, list[dict]]:
    """Default token folder → its versions: {folder, card_hash, shards, current}."""
    store = DatasetStore(root, storage_options)
    out: dict[str, list[dict]] = defaultdict(list)
    for folder in store.ledger_folders():
        base = folder.split(VERSION_SEP)[0]
        recs = store.ledger(folder)
        prods = {r["producer"].get("card_hash") for r in recs.values() if r["producer"].get("kind") == "tokenizer"}
        for ch in sorted(p for p in prods if p):
            out[base].append({"folder": folder, "card_hash": ch, "current": folder == base,
                              "shards": sorted(i for i, r in recs.items() if r["producer"].get("card_hash") == ch)})
    return dict(out)


def select_token_version(root: str, folder: str, card_hash: str, storage_options: dict | None = None) -> int:
    """Make the kept version ``card_hash`` of ``folder`` the default again; returns shards swapped."""
    store = DatasetStore(root, storage_options)
    kept_folder = version_folder(folder, card_hash)
    kept = store.ledger(kept_folder)
    if not kept:
        raise UserError(f"{store.url}: no kept version {kept_folder} (`prism4m tokens versions ROOT` lists them)")
    current = store.ledger(folder)
    swapped = 0
    for index, rec in sorted(kept.items()):
        cur = current.get(index)
        if cur is not None and cur["producer"].get("card_hash") == card_hash:
            continue
        outputs = {folder: store.read_shard(kept_folder, index)}
        records = {folder: _carried_record(rec)}
        errors = {folder: store.shard_errors(kept_folder, index)}
        if cur is not None and cur["producer"].get("kind") == "tokenizer":
            back = version_folder(folder, cur["producer"]["card_hash"])
            outputs[back] = store.read_shard(folder, index)
            records[back] = _carried_record(cur)
            errors[back] = store.shard_errors(folder, index)
        store.commit_unit(index, outputs, records, errors)
        swapped += 1
    update_manifest(store)
    return swapped
