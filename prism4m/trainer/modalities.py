"""Modality registry for the trainer.

A modality is what the model sees as one embedding family: a token grid (``img``), a
token vector without spatial layout (``global``) or a text-like sequence (``seq``).
The registry is resolved in this order, later sources winning:

1. ml-4m's defaults from the modality table (prism4m.contract.modalities): type, token
   grid and count — never a token folder's vocabulary when there is a root to read it from;
2. the dataset manifest ``ROOT/prism4m.json`` (a Parquet export's ``_export.json``) and any
   tokenizer cards it points to or embeds (vocabulary size, token grid); for a folder the
   manifest does not describe (a stale manifest), the folder's ledger producer;
3. explicit overrides from the training config.

If the token count is still unknown it is read from the first committed sample. A token
folder whose vocabulary none of these give is refused (UserError naming the folder): a
guessed vocabulary silently trains on the wrong ids.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

import fsspec

from prism4m.contract.modalities import MODALITIES, TEXT_VOCAB_SIZE
from prism4m.contract.store import LEDGER_DIR, MANIFEST, SHARD_PATTERN, DatasetStore
from prism4m.errors import UserError
from prism4m.pipeline.export import EXPORT_SUMMARY

ModalityType = Literal["img", "seq", "global"]


@dataclass(frozen=True)
class TrainModality:
    """One modality as the trainer needs it.

    ``num_tokens`` is the token count per crop for img/global, and the maximum sequence
    length (EOS included) for seq modalities.
    """

    name: str
    type: ModalityType
    vocab_size: int
    num_tokens: int
    folder: str
    grid: tuple[int, int] | None = None  # (h, w) of an img token grid, row-major
    max_length: int = 0  # positional table length for seq embeddings (>= num_tokens)

    def __post_init__(self) -> None:
        if self.type not in ("img", "seq", "global"):
            raise ValueError(f"modality {self.name}: unknown type {self.type!r}")
        if self.vocab_size <= 0 or self.num_tokens <= 0:
            raise ValueError(f"modality {self.name}: vocab_size and num_tokens must be positive")
        if self.type == "img":
            grid = self.grid or _square_grid(self.name, self.num_tokens)
            if grid[0] * grid[1] != self.num_tokens:
                raise ValueError(f"modality {self.name}: grid {grid} does not hold {self.num_tokens} tokens")
            object.__setattr__(self, "grid", tuple(grid))
        if self.max_length < self.num_tokens:
            object.__setattr__(self, "max_length", self.num_tokens)

    @property
    def is_sequence(self) -> bool:
        return self.type == "seq"


def _square_grid(name: str, n: int) -> tuple[int, int]:
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"modality {name}: {n} tokens is not a square grid; give 'grid' explicitly")
    return (side, side)


def _defaults() -> dict[str, dict[str, Any]]:
    """ml-4m's defaults by modality name without resolution (``tok_rgb``, ``caption``), from
    the modality table; image grids come from the patch size and are scaled in `default_spec`."""
    out: dict[str, dict[str, Any]] = {}
    for m in MODALITIES.values():
        if m.train_type is None:
            continue
        size = {"patch": m.patch_size} if m.train_type == "img" else {"num_tokens": m.tokens}
        out[m.token_name or m.name] = {"type": m.train_type, "vocab_size": m.vocab, **size}
    return out


_DEFAULTS = _defaults()


def base_name(modality: str) -> str:
    return modality.split("@")[0]


def resolution(modality: str, default: int = 224) -> int:
    return int(modality.split("@")[1]) if "@" in modality else default


def default_spec(modality: str) -> dict[str, Any] | None:
    """ml-4m-like defaults for a modality name such as ``tok_rgb@224`` or ``caption``."""
    info = _DEFAULTS.get(base_name(modality))
    if info is None:
        return None
    out = {k: v for k, v in info.items() if k != "patch"}
    if info["type"] == "img":
        side = resolution(modality) // info["patch"]
        out["num_tokens"] = side * side
        out["grid"] = (side, side)
    return out


#: what describes a root's folders: a prism4m root's manifest, or the export's summary
#: (pipeline/export.py) when the root is a Parquet export directory
MANIFEST_FILES = (MANIFEST, EXPORT_SUMMARY)


def read_manifest(root: str) -> dict[str, Any]:
    """The dataset manifest, or {} when the root has none (e.g. an ml-4m-layout root)."""
    store = DatasetStore(root)
    for name in MANIFEST_FILES:
        if store.exists(store.p(name)):
            return store.read_json(store.p(name))
    return {}


def ledger_fields(root: str, folder: str) -> dict[str, Any]:
    """Vocabulary/type from the tokenizer producer of ``folder``'s last ledger record (prism4m
    roots; a manifest that lost the folder), or {}."""
    store = DatasetStore(root)
    try:
        names = store.fs.ls(store.p(LEDGER_DIR, folder), detail=False)
    except FileNotFoundError:
        return {}
    indices = [int(m.group(1)) for m in (SHARD_PATTERN.match(posixpath.basename(n)) for n in names)
               if m and m.group(2) == "json"]
    if not indices:
        return {}
    producer = store.read_json(store.ledger_path(folder, max(indices))).get("producer") or {}
    return _card_fields(producer) if producer.get("kind") == "tokenizer" else {}


def _card_fields(card: Mapping[str, Any]) -> dict[str, Any]:
    """Pull vocabulary and grid out of a tokenizer card, tolerating a few spellings."""
    out: dict[str, Any] = {}
    card = {k: v for k, v in card.items() if v is not None}
    for key in ("vocab_size", "codebook_size", "vocabulary_size"):
        if key in card:
            out["vocab_size"] = int(card[key])
            break
    grid = card.get("token_grid") or card.get("grid")
    if isinstance(grid, (list, tuple)) and len(grid) == 2:
        out["grid"] = (int(grid[0]), int(grid[1]))
        out["num_tokens"] = int(grid[0]) * int(grid[1])
    for key in ("n_tokens", "num_tokens", "tokens_per_sample"):
        if key in card:
            out["num_tokens"] = int(card[key])
    card_type = card.get("type")
    if card_type in ("mlp", "global"):
        out["type"] = "global"
    elif card_type in ("wordpiece", "text"):
        out["type"] = "seq"
    return out


def _manifest_fields(manifest: Mapping[str, Any], folder: str, root: str) -> dict[str, Any]:
    """Fields for one folder from the manifest: its entry, an embedded card, or a card path."""
    entries = manifest.get("modalities") or manifest.get("folders") or {}
    if isinstance(entries, list):  # a list of {"name"/"folder": …} entries
        entries = {e.get("folder") or e.get("name"): e for e in entries if isinstance(e, Mapping)}
    entry = entries.get(folder) if isinstance(entries, Mapping) else None
    if not isinstance(entry, Mapping):
        return {}
    out = _card_fields(entry)
    # prism4m manifests summarise each folder's ledger producers; a tokenizer producer
    # carries the card's type, vocab_size and n_tokens.
    producers = entry.get("producers")
    if isinstance(producers, Mapping):
        for producer in producers.values():
            if isinstance(producer, Mapping) and producer.get("kind") == "tokenizer":
                out.update(_card_fields(producer))
    card = entry.get("tokenizer_card") or entry.get("card") or entry.get("tokenizer")
    if isinstance(card, Mapping):
        out.update(_card_fields(card))
    elif isinstance(card, str) and card.endswith(".json"):
        card_url = card if "://" in card or card.startswith("/") else f"{root.rstrip('/')}/{card}"
        try:
            with fsspec.open(card_url, "r") as f:
                out.update(_card_fields(json.load(f)))
        except FileNotFoundError:
            pass  # a card that moved is not fatal: defaults and overrides still apply
    return out


def build_registry(
    modalities: list[str],
    root: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    peek_num_tokens: Any = None,
) -> dict[str, TrainModality]:
    """Resolve every requested modality to a TrainModality.

    ``peek_num_tokens(folder) -> int | None`` is called when no source gives a token count
    (the data loader passes a function that reads the first committed sample).
    """
    overrides = overrides or {}
    manifest = read_manifest(root) if root else {}
    registry: dict[str, TrainModality] = {}
    for name in modalities:
        override = dict(overrides.get(name, {}))
        folder = override.get("folder", name)
        fields: dict[str, Any] = {"folder": folder}
        fields.update(default_spec(name) or {})
        if root:
            if fields.get("type") != "seq":
                fields.pop("vocab_size", None)  # the data's tokenizer decides, never ml-4m's default
            found = _manifest_fields(manifest, folder, root)
            if "vocab_size" not in found:
                found = {**ledger_fields(root, folder), **found}
            fields.update(found)
        fields.update(override)
        if "num_tokens" not in fields and peek_num_tokens is not None:
            n = peek_num_tokens(fields["folder"])
            if n:
                fields["num_tokens"] = int(n)
        if "type" not in fields:
            fields["type"] = "img" if name.startswith("tok_") else "seq"
        if fields["type"] == "seq":
            fields.setdefault("vocab_size", TEXT_VOCAB_SIZE)
        if "vocab_size" not in fields and root:
            raise UserError(
                f"modality {name}: the vocabulary of token folder {fields['folder']!r} is not in {root}'s "
                f"manifest ({' or '.join(MANIFEST_FILES)}), a tokenizer card or its ledger; set "
                f"modality_overrides.{name}.vocab_size to the size of the tokenizer that wrote it"
            )
        missing = [k for k in ("vocab_size", "num_tokens") if k not in fields]
        if missing:
            raise UserError(
                f"modality {name}: unknown {', '.join(missing)}; set it under "
                f"modality_overrides.{name} in the config or add a tokenizer card to the manifest"
            )
        if "grid" in fields and fields["grid"] is not None:
            fields["grid"] = tuple(fields["grid"])
        registry[name] = TrainModality(name=name, **fields)
    return registry


def with_overrides(spec: TrainModality, **changes: Any) -> TrainModality:
    return replace(spec, **changes)
