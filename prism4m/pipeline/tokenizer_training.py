"""Train a tokenizer on a dataset root: ``train_tokenizer(root, modality, out_dir, config)``.

- Data: every crop row of every valid sample of the committed shards of the modality's
  folder (modality.cropping, the same code tokenize uses), up to ``max_train_crops`` held in
  memory. The last committed shard is held out for the card's metrics; a root with one shard
  holds out its last ``held_out_fraction`` of samples instead.
- Bounds: ``steps`` and/or ``max_seconds`` (whichever comes first).
- Checkpoints: ``OUT/_checkpoint/`` (weights, optimizer, step) every ``checkpoint_every_s``
  seconds and at the end. A re-run with the same config resumes from it; batches are drawn
  from an RNG keyed on (seed, step), so a resumed run sees the batches it would have seen.
  A finished directory whose card has the same config hash is returned as is.
- Card: held-out reconstruction metrics and codebook usage (tokenizers.metrics), the
  training data (root, shards, crops) and the config hash.

Text (``modality="text"``): a WordPiece tokenizer in ml-4m's layout (tokenizers.text) learned
on the serialised sequence members (and SAM instance / pose tokens, once tokenized). SAM
instances: the mask VQ model on the 64×64 masks of every instance kept in every crop, binary
cross-entropy, metrics the held-out mean IoU. Human poses: the MLP model on every person's
box-relative keypoints, 8 tokens, metrics include the held-out keypoint error in box sides.
"""

from __future__ import annotations

import io
import json
import posixpath
import sys
import time
from typing import Any, Callable

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prism4m.contract.modalities import TEXT_VOCAB_SIZE
from prism4m.contract.store import DatasetStore, now_iso
from prism4m.errors import UserError, describe_validation_error
from prism4m.modality.cropping import crop_all
from prism4m.modality.instances import CONTOUR_EPSILON, MASK_SIZE, MIN_AREA
from prism4m.modality.samples import iter_shard_inputs, rgb_hw
from prism4m.modality.serializers import (SEQUENCE_LABEL_FOLDERS, SERIALIZERS, TOKEN_FOLDER_SERIALIZERS,
                                          token_sequence_folders)
from prism4m.modality.specs import SPECS, TokenSpec, get_spec, normalise
from prism4m.pipeline.progress import Progress
from prism4m.tokenizers.base import SIZES, NeuralTokenizer
from prism4m.tokenizers.card import MAX_VOCAB, TokenizerCard, config_hash, read_card
from prism4m.tokenizers.mask import MaskTokenizer
from prism4m.modality.token_stats import codebook_usage
from prism4m.tokenizers.metrics import reconstruction_metrics
from prism4m.tokenizers.mlp import MLPTokenizer, mlp_architecture
from prism4m.tokenizers.pose import PoseTokenizer
from prism4m.tokenizers.text import NUM_SENTINELS, WordPieceTokenizer, fixed_tokens, train_wordpiece
from prism4m.tokenizers.vq import VQTokenizer, vq_architecture

CHECKPOINT_DIR = "_checkpoint"
#: ml-4m writes an instance's or a pose's token t as v0=t (t < 512) or v1=t-512, and v1 stops at 999
SEQUENCE_MAX_VOCAB = 512 + 1000


class TokenizerTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: str = Field("tiny", description="architecture preset: tiny | small | base")
    input_size: int = Field(224, ge=8, description="crop side fed to the encoder (rgb pixels)")
    codebook_size: int | None = Field(None, ge=2, description="vocabulary (default: ml-4m's for the modality)")
    n_tokens: int | None = Field(None, ge=1, description="tokens per vector (MLP tokenizers; default 16, "
                                                          "human_poses 8 as ml-4m)")
    steps: int = Field(1000, ge=0)
    max_seconds: float | None = Field(None, gt=0, description="stop after this much training time")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    commitment_weight: float = Field(0.25, ge=0)
    max_train_crops: int = Field(4096, ge=1, description="crops held in memory for training")
    max_eval_crops: int = Field(256, ge=1)
    held_out_fraction: float = Field(0.1, gt=0, lt=1, description="single-shard roots only")
    checkpoint_every_s: float = Field(60.0, gt=0)
    seed: int = 0
    vocab_size: int = Field(TEXT_VOCAB_SIZE, description="WordPiece vocabulary (text)")
    min_frequency: int = Field(2, ge=1, description="WordPiece pair frequency floor (text)")

    @field_validator("size")
    @classmethod
    def _known_size(cls, v: str) -> str:
        if v not in SIZES:
            raise ValueError(f"unknown size {v!r}; choose from {', '.join(SIZES)}")
        return v

    @field_validator("vocab_size")
    @classmethod
    def _room_for_words(cls, v: int) -> int:
        fixed = len(fixed_tokens())
        if v <= fixed:
            raise ValueError(f"must exceed the {fixed} fixed tokens of ml-4m's text layout (specials, "
                             f"sentinels, v0..v3 values, COCO classes), e.g. {fixed + 1000}")
        return v

    @field_validator("codebook_size")
    @classmethod
    def _fits_int16(cls, v: int | None) -> int | None:
        if v is not None and v > MAX_VOCAB:
            raise ValueError(f"at most {MAX_VOCAB}: token files hold int16 ids")
        return v


def parse_config(config: "TokenizerTrainConfig | dict | None") -> "TokenizerTrainConfig":
    """A TokenizerTrainConfig from a mapping, or a UserError naming the bad setting in prism4m's words."""
    if isinstance(config, TokenizerTrainConfig):
        return config
    try:
        return TokenizerTrainConfig.model_validate(config or {})
    except ValidationError as exc:
        raise UserError(f"tokenizer settings: {describe_validation_error(exc, '')}") from None


def check_settings(spec: TokenSpec, cfg: TokenizerTrainConfig) -> None:
    """Refuse settings this modality's tokenizer cannot have, before any data is read."""
    vocab = cfg.codebook_size or spec.default_vocab
    if spec.in_sequence and vocab > SEQUENCE_MAX_VOCAB:
        raise UserError(f"tokenizer settings: codebook_size {vocab} is too large for {spec.name}: at most "
                        f"{SEQUENCE_MAX_VOCAB}, the ids ml-4m's sequence can write (v0=t below 512, v1=t-512 "
                        "up to v1=999)")
    if spec.kind in ("image", "classes", "feature") and cfg.input_size % spec.patch_size:
        raise UserError(f"tokenizer settings: input_size {cfg.input_size} is not a multiple of {spec.name}'s "
                        f"patch size {spec.patch_size}")


# ---------------------------------------------------------------------------------- data
def _split_shards(store: DatasetStore, folder: str) -> tuple[list[int], list[int]]:
    committed = sorted(set(store.ledger(folder)) & set(store.ledger("crop_settings")) & set(store.ledger("rgb")))
    if not committed:
        raise UserError(f"{store.url}: no shard of {folder!r} is committed (with rgb and crop_settings); "
                        f"label it first")
    if len(committed) == 1:
        return committed, committed
    return committed[:-1], committed[-1:]


def collect_crops(store: DatasetStore, spec: TokenSpec, shards: list[int], input_size: int,
                  limit: int, part: slice = slice(None)) -> tuple[np.ndarray, int]:
    """Un-normalised crops of every row of every valid sample (``part`` of each shard's samples)."""
    out: list[np.ndarray] = []
    n = 0
    samples = 0
    for index in shards:
        items = [s for s in iter_shard_inputs(store, spec, index)][part]
        for s in items:
            if s.value is None:
                continue
            crops = crop_all(spec, s.value, s.rows, input_size, s.image_hw, s.region)
            out.append(crops[: limit - n])
            n += len(out[-1])
            samples += 1
            if n >= limit:
                return np.concatenate(out), samples
    if not out:
        raise ValueError(f"{store.url}: no valid sample of {spec.folder!r} in shards {shards}")
    return np.concatenate(out), samples


def _holdout_slices(store, spec, train, held, frac):
    if train != held:
        return slice(None), slice(None)
    n = store.ledger(spec.folder)[train[0]]["n_samples"]
    cut = max(1, min(n - 1, int(round(n * (1 - frac)))))
    return slice(0, cut), slice(cut, None)


# ---------------------------------------------------------------------------------- model
def _loss(spec: TokenSpec, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if spec.loss == "ce":
        return F.cross_entropy(recon, x.long())
    if spec.loss == "smooth_l1":
        return F.smooth_l1_loss(recon, x)
    if spec.loss == "bce":
        return F.binary_cross_entropy_with_logits(recon, x)
    if spec.loss == "cosine":
        return (1 - F.cosine_similarity(recon, x, dim=-1)).mean() + 0.1 * F.mse_loss(recon, x)
    return F.mse_loss(recon, x)


def _build(spec: TokenSpec, cfg: TokenizerTrainConfig, channels: int) -> NeuralTokenizer:
    size = SIZES[cfg.size]
    vocab = cfg.codebook_size or spec.default_vocab
    check_settings(spec, cfg)
    # tokens per instance / person, not per crop: the card has no n_tokens (see the tokenize stage's producer)
    per_crop = not spec.in_sequence
    if spec.kind in ("global", "pose"):
        n = cfg.n_tokens or spec.default_tokens
        cls = PoseTokenizer if spec.kind == "pose" else MLPTokenizer
        card = TokenizerCard(type=cls.type, modality=spec.name, token_folder=spec.token_folder(cfg.input_size),
                             vocab_size=vocab, n_tokens=n if per_crop else None, token_grid=[1, n],
                             input_size=cfg.input_size, architecture=mlp_architecture(size, channels, n, vocab))
        return cls.create(card)
    # instance masks: the encoder sees the mask, input_size stays the crop side of the boxes
    arch = vq_architecture(spec, MASK_SIZE if spec.kind == "instances" else cfg.input_size, size, vocab, channels)
    g = arch["grid"]
    cls = MaskTokenizer if spec.kind == "instances" else VQTokenizer
    card = TokenizerCard(type=cls.type, modality=spec.name, token_folder=spec.token_folder(cfg.input_size),
                         vocab_size=vocab, n_tokens=g * g if per_crop else None, token_grid=[g, g],
                         input_size=cfg.input_size, patch_size=spec.patch_size, architecture=arch)
    return cls.create(card)


def _normalisation(spec: TokenSpec) -> dict[str, Any]:
    return {
        "unit": {"kind": "unit", "formula": "x / 127.5 - 1"},
        "depth_truncated": {"kind": "depth_truncated", "percentiles": [10, 90], "per": "crop"},
        "standardize": {"kind": "standardize", "per": "channel", "stats": "in weights (in_mean, in_std)"},
        "none": {"kind": "class_ids", "shift_idx_by_one": True, "num_classes": spec.num_classes},
        "binary": {"kind": "binary_mask", "mask_size": MASK_SIZE, "min_area_px": MIN_AREA,
                   "threshold": 0.5, "contour_epsilon_px": CONTOUR_EPSILON},
    }[spec.normalise] | {"resample": spec.resample, "flip": spec.flip}


# ---------------------------------------------------------------------------------- checkpoints
def _ckpt_path(out_dir: str, name: str) -> str:
    return posixpath.join(str(out_dir).rstrip("/"), CHECKPOINT_DIR, name)


def _save_checkpoint(out_dir: str, tok: NeuralTokenizer, opt, step: int, elapsed: float, chash: str) -> None:
    fs, _ = fsspec.core.url_to_fs(str(out_dir))
    fs.makedirs(_ckpt_path(out_dir, ""), exist_ok=True)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    fs.pipe_file(_ckpt_path(out_dir, "model.safetensors"), tok.weights_bytes())
    fs.pipe_file(_ckpt_path(out_dir, "optimizer.pt"), buf.getvalue())
    # state last: a checkpoint is complete only once its state names the step
    fs.pipe_file(_ckpt_path(out_dir, "state.json"),
                 json.dumps({"step": step, "elapsed": elapsed, "config_hash": chash}).encode())


def _load_checkpoint(out_dir: str, tok: NeuralTokenizer, opt, chash: str) -> tuple[int, float]:
    from safetensors.torch import load as st_load

    fs, _ = fsspec.core.url_to_fs(str(out_dir))
    if not fs.exists(_ckpt_path(out_dir, "state.json")):
        return 0, 0.0
    state = json.loads(fs.cat_file(_ckpt_path(out_dir, "state.json")))
    if state.get("config_hash") != chash:
        return 0, 0.0  # a different run: start over rather than mix configs
    tok.model.load_state_dict(st_load(fs.cat_file(_ckpt_path(out_dir, "model.safetensors"))))
    opt.load_state_dict(torch.load(io.BytesIO(fs.cat_file(_ckpt_path(out_dir, "optimizer.pt"))), weights_only=True))
    return int(state["step"]), float(state["elapsed"])


def _finished_card(out_dir: str, training_hash: Callable[[list[int]], str], train_shards: list[int]
                   ) -> TokenizerCard | None:
    """The finished tokenizer in ``out_dir`` when this run would train it again, else None when
    there is none. ``training_hash(shards)`` is this run's config hash on those training shards.

    - trained exactly so: returned (a rerun is a no-op);
    - the same tokenizer trained before the root grew (same modality, root and settings, fewer
      shards): returned as it is, with a warning. Tokens made with it stay current; retraining
      would change every token of the root;
    - anything else (another modality, root or settings) is refused: training over it would lose
      the weights that tokens already made with it decode with (a kept token version, say).
    """
    try:
        card = read_card(out_dir)
    except (FileNotFoundError, OSError):
        return None
    made = card.training.get("config_hash")
    if made == training_hash(train_shards):
        return card
    earlier = list(card.training.get("train_shards") or [])
    if earlier and set(earlier) < set(train_shards) and made == training_hash(earlier):
        print(f"warning: tokenizer {out_dir} was trained on {len(earlier)} of the {len(train_shards)} training "
              f"shards this root has now; it is kept as it is (tokens made with it stay current): delete it to "
              f"retrain on all", file=sys.stderr, flush=True)
        return card
    raise UserError(f"--out {out_dir}: holds a finished {card.modality} tokenizer (card {card.card_hash()[:8]}, "
                    f"{card.created_at or 'undated'}) trained on other data or settings; tokens made with it need "
                    f"it: choose another --out, or delete that directory to retrain there")


# ---------------------------------------------------------------------------------- entry point
def train_tokenizer(root: str, modality: str, out_dir: str, config: TokenizerTrainConfig | dict | None = None,
                    *, progress: bool = True, storage_options: dict | None = None) -> TokenizerCard:
    """Train a tokenizer for ``modality`` (a name in modality.specs.SPECS, or "text") on ``root``.

    Writes ``out_dir/card.json`` + weights and returns the card. Resumes from
    ``out_dir/_checkpoint`` when the config is unchanged; returns at once if finished.
    Bad settings, an unknown modality or an unlabelled folder raise UserError. A card
    trained on random-weight labels (or not trained at all) is said so on stderr.
    """
    cfg = parse_config(config)
    if modality != "text" and modality not in SPECS:
        raise UserError(f"--modality {modality!r}: no tokenizer for it; known: text, {', '.join(sorted(SPECS))}")
    store = DatasetStore(root, storage_options)
    card = _train_text(store, out_dir, cfg) if modality == "text" else _train_neural(store, modality, out_dir, cfg, progress)
    if card.from_random_weights:
        why = ("was never trained (0 steps): random weights" if card.random_weights else
               f"was trained on random-weight labels ({', '.join(card.training.get('random_weight_folders', []))})")
        print(f"warning: tokenizer {out_dir} {why} [RANDOM WEIGHTS]; its tokens are for smoke tests, "
              "not for training models", file=sys.stderr, flush=True)
    return card


def random_weight_folders(store: DatasetStore, folders: list[str], shards: list[int]) -> list[str]:
    """The folders among ``folders`` whose ledger record of any of ``shards`` says random_weights
    (labels a random-weight model made, or derived from such labels)."""
    return [f for f in folders if any(rec.get("random_weights") for i, rec in store.ledger(f).items() if i in shards)]


def _train_neural(store: DatasetStore, modality: str, out_dir: str, cfg: TokenizerTrainConfig,
                  progress: bool) -> TokenizerCard:
    spec = get_spec(modality)
    check_settings(spec, cfg)
    train_shards, held_shards = _split_shards(store, spec.folder)
    def training_hash(shards: list[int]) -> str:
        return config_hash({"modality": modality, "root": store.url, "train": shards,
                            **cfg.model_dump(exclude={"checkpoint_every_s"})})

    chash = training_hash(train_shards)
    done = _finished_card(out_dir, training_hash, train_shards)
    if done is not None:
        return done

    train_part, held_part = _holdout_slices(store, spec, train_shards, held_shards, cfg.held_out_fraction)
    x_train, n_train_samples = collect_crops(store, spec, train_shards, cfg.input_size, cfg.max_train_crops, train_part)
    x_held, n_held_samples = collect_crops(store, spec, held_shards, cfg.input_size, cfg.max_eval_crops, held_part)
    # A small root can hold no person (instance) at all, or none in the held-out shard.
    what = {"pose": "person", "instances": "instance"}.get(spec.kind, "valid sample")
    for x, shards, role in ((x_train, train_shards, "train on"), (x_held, held_shards, "measure it on")):
        if len(x) == 0:
            where = "the held-out " if role == "measure it on" and held_shards != train_shards else ""
            raise UserError(f"{store.url}: {spec.folder} has no {what} in {where}shard(s) {shards} to {role}"
                            f" (the last shard is held out); label more images first")
    channels = x_train.shape[1] if spec.kind != "classes" else 1
    torch.manual_seed(cfg.seed)
    tok = _build(spec, cfg, channels)
    if spec.normalise == "standardize":
        axes = (0, 2, 3) if x_train.ndim == 4 else (0,)
        tok.model.in_mean.copy_(torch.from_numpy(x_train.mean(axis=axes).astype(np.float32)))
        tok.model.in_std.copy_(torch.from_numpy(x_train.std(axis=axes).astype(np.float32) + 1e-6))
    xs_train = normalise(spec, x_train, tok.input_stats)
    xs_held = normalise(spec, x_held, tok.input_stats)

    opt = torch.optim.AdamW(tok.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, elapsed = _load_checkpoint(out_dir, tok, opt, chash)
    bar = Progress(f"tokenizer train {modality}", cfg.steps, enabled=progress)
    bar.update(units=step, samples=step * cfg.batch_size)
    tok.model.train()
    t_start = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()
    last_loss = float("nan")
    while step < cfg.steps and (cfg.max_seconds is None or time.perf_counter() - t_start < cfg.max_seconds):
        rng = np.random.default_rng([cfg.seed, step])
        batch = torch.from_numpy(xs_train[rng.integers(0, len(xs_train), cfg.batch_size)])
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        recon, _, commit = tok.model(batch)
        loss = _loss(spec, recon, batch) + cfg.commitment_weight * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.model.parameters(), 1.0)
        opt.step()
        step += 1
        last_loss = loss.item()
        bar.update(units=1, samples=cfg.batch_size)
        if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s:
            _save_checkpoint(out_dir, tok, opt, step, time.perf_counter() - t_start, chash)
            last_ckpt = time.perf_counter()
    seconds = time.perf_counter() - t_start
    _save_checkpoint(out_dir, tok, opt, step, seconds, chash)
    bar.close()

    tok.model.eval()
    ids = np.concatenate([tok.encode(xs_held[i:i + 64]) for i in range(0, len(xs_held), 64)])
    recon = np.concatenate([tok.decode(ids[i:i + 64]) for i in range(0, len(ids), 64)])
    card = tok.card
    card.normalisation = _normalisation(spec)
    card.metrics = {"held_out": reconstruction_metrics(spec, xs_held, recon, tok.input_stats),
                    "held_out_crops": int(len(xs_held)), "final_train_loss": last_loss}
    card.codebook = codebook_usage(ids, card.vocab_size)
    card.training = {
        "root": store.url, "folder": spec.folder, "train_shards": train_shards, "held_out_shards": held_shards,
        "held_out_part": None if train_shards != held_shards else f"last {cfg.held_out_fraction:.0%} of samples",
        "train_samples": n_train_samples, "train_crops": int(len(xs_train)), "held_out_samples": n_held_samples,
        "steps": step, "seconds": round(seconds, 2), "config": cfg.model_dump(mode="json"), "config_hash": chash,
    }
    card.random_weights = step == 0
    rw = random_weight_folders(store, [spec.folder, "rgb", "crop_settings"], sorted(set(train_shards + held_shards)))
    card.trained_on_random_weights = bool(rw)
    card.training["random_weight_folders"] = rw
    card.created_at = now_iso()
    tok.save(out_dir)
    return card


def text_folders(store: DatasetStore) -> list[str]:
    """The sequence folders, plus the token folders that become sequences (``sam_instance@224``,
    whose sequences need the words ``point``, ``polygon`` and ``none``)."""
    return list(SEQUENCE_LABEL_FOLDERS) + token_sequence_folders(store.ledger_folders())


def collect_texts(store: DatasetStore, shards: list[int] | None = None) -> list[str]:
    """Captions and serialised sequence members of the committed shards (deterministic order)."""
    texts = []
    for folder in text_folders(store):
        ledger = store.ledger(folder)
        for index in sorted(ledger) if shards is None else [i for i in shards if i in ledger]:
            hw = {}
            if folder in ("det", "human_poses"):
                hw = {m.key: rgb_hw(m.data) for m in store.iter_shard("rgb", index) if not m.is_invalid}
            rng = np.random.default_rng(index)
            for m in store.iter_shard(folder, index):
                if m.is_invalid:
                    continue
                value = json.loads(m.data) if m.ext.endswith("json") else m.data.decode("utf-8")
                try:
                    serialize = SERIALIZERS.get(folder) or TOKEN_FOLDER_SERIALIZERS[folder.split("@")[0]]
                    text = serialize(value, image_hw=hw.get(m.key), rng=rng)
                except (KeyError, ValueError, TypeError):
                    continue
                if text:
                    texts.append(text)
    return texts


def _train_text(store: DatasetStore, out_dir: str, cfg: TokenizerTrainConfig) -> TokenizerCard:
    # Every sequence folder counts (a root may have palettes and metadata but no captions).
    shards = sorted(set().union(*(store.ledger(f) for f in text_folders(store))))
    held = shards[-1:] if len(shards) > 1 else []
    train = [s for s in shards if s not in held]
    def training_hash(shards: list[int]) -> str:
        return config_hash({"modality": "text", "root": store.url, "train": shards, "vocab_size": cfg.vocab_size,
                            "min_frequency": cfg.min_frequency})

    chash = training_hash(train)
    done = _finished_card(out_dir, training_hash, train)
    if done is not None:
        return done
    texts = collect_texts(store, train)
    if not texts:
        raise UserError(f"{store.url}: no caption or sequence member to train a text tokenizer on "
                        f"(label one of {', '.join(SEQUENCE_LABEL_FOLDERS)} first)")
    tok = WordPieceTokenizer(train_wordpiece(texts, cfg.vocab_size, min_frequency=cfg.min_frequency))
    held_texts = collect_texts(store, held) if held else texts[-max(1, len(texts) // 10):]
    enc = tok.encode_batch(held_texts)
    n_tok = sum(len(e) for e in enc)
    words = sum(len(t.split()) for t in held_texts)
    card = TokenizerCard(type="wordpiece", modality="text", vocab_size=tok.vocab_size,
                         normalisation={"normalizer": "BertNormalizer(lowercase=True)", "pre_tokenizer": "Bert"},
                         architecture={"model": "WordPiece", "layout": "ml-4m", "num_sentinels": NUM_SENTINELS})
    card.metrics = {"held_out": {"unk_rate": sum(e.count(1) for e in enc) / max(1, n_tok),
                                 "tokens_per_word": n_tok / max(1, words), "texts": len(held_texts)}}
    rw = random_weight_folders(store, text_folders(store), shards)
    card.training = {"root": store.url, "train_shards": train, "held_out_shards": held, "texts": len(texts),
                     "config": cfg.model_dump(mode="json"), "config_hash": chash, "random_weight_folders": rw}
    card.trained_on_random_weights = bool(rw)
    card.created_at = now_iso()
    tok.save(out_dir, card)
    return card
