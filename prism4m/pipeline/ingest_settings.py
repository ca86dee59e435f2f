"""Ingest settings, and the settings a root remembers.

A root is made with one set of settings (resolution, JPEG quality, crops, filters) and every
later `prism4m ingest` into it uses them: a committed shard is up to date exactly when it was
made with them, so extending a root with other settings would make every committed shard look
out of date. The settings live in `_plan/ingest_settings.json` beside the plan; a root made
before that file existed remembers them through its rgb ledger (the producer's config).
A setting the user gives that differs from the root's is refused, naming both values, unless
`force` re-ingests everything with the new settings.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism4m.errors import UserError, describe_validation_error
from prism4m.contract.store import PLAN_DIR, DatasetStore

SETTINGS_PATH = f"{PLAN_DIR}/ingest_settings.json"


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_size: int = Field(1000, ge=1, description="samples per shard (ml-4m uses 1,000–10,000)")
    short_side: int = Field(512, ge=32, description="resize so the short side is this (serves 224 and 448 crops)")
    jpeg_quality: int = Field(90, ge=50, le=100)
    jpeg_subsampling: Literal["auto", "4:4:4", "4:2:2", "4:2:0"] = Field(
        "auto", description="chroma subsampling of rgb/: auto keeps full chroma (4:4:4) at quality >= 90, "
                            "where labelers and the RGB tokenizer should see every colour edge, else 4:2:0; "
                            "4:2:0 (img2dataset's) makes files ~30-40% smaller and encodes faster")
    resize_filter: Literal["bicubic", "lanczos", "hamming"] = Field(
        "bicubic", description="Pillow's antialiased resize filter to the short side: bicubic (sharp, the "
                               "default, and the fastest: Pillow's algorithm, on torch's vectorised kernel in "
                               "units of >= 256 images), "
                               "lanczos (sharper, ~3.5x slower), hamming (softer: ~44 dB PSNR against bicubic, "
                               "~1.7x slower; kept for roots made with it; docs/DATASET.md)")
    n_crops: int = Field(5, ge=1, description="crop_settings rows per sample (row 0: centre square)")
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    min_side: int = Field(32, ge=1, description="smaller images are refused (too_small)")
    max_pixels: int = Field(89_478_485, ge=1, description="larger images are refused (too_large; bomb guard)")
    max_bytes: int = Field(256 * 2**20, ge=1, description="larger files are refused (too_large)")
    dedup: bool = Field(True, description="drop content duplicates (recorded with duplicate_of)")
    scan_batch: int = Field(256, ge=1, description="image files per scan task")

    def output_fields(self) -> dict:
        """The settings a committed sample depends on (its producer's config).

        ``jpeg_subsampling`` appears only when it is not ``auto`` and ``resize_filter`` only when
        it is not ``bicubic`` (what roots made before these settings existed used), so their
        producers, hence their shards, stay current."""
        out = self.model_dump(mode="json", exclude={"shard_size", "scan_batch", "max_bytes", "dedup"})
        if out["jpeg_subsampling"] == "auto":
            del out["jpeg_subsampling"]
        if out["resize_filter"] == "bicubic":
            del out["resize_filter"]
        return out

    @property
    def subsampling(self) -> str:
        """The chroma subsampling written: ``auto`` resolved by the quality."""
        if self.jpeg_subsampling != "auto":
            return self.jpeg_subsampling
        return "4:4:4" if self.jpeg_quality >= 90 else "4:2:0"


# Settings a root keeps for good: they decide what committed samples are (output_fields) or
# which items become samples (dedup). The others (shard size, scan batch, byte limit) only
# shape new work, so a new value simply applies to what is added now.
def _binding(cfg: IngestConfig) -> dict:
    # Every value, defaults included: output_fields leaves a default jpeg_subsampling /
    # resize_filter out, and a key only one side had was never compared: a root made with `auto`
    # took `--jpeg-subsampling 4:2:0` without --force and silently re-ingested every shard.
    return {**cfg.model_dump(mode="json", exclude={"shard_size", "scan_batch", "max_bytes"})}


def remembered_settings(store: DatasetStore) -> dict | None:
    """The settings this root was made with (None for a new root)."""
    path = store.p(SETTINGS_PATH)
    if store.exists(path):
        return store.read_json(path)
    rgb = store.ledger("rgb")
    if not rgb:
        return None
    newest = max(rgb.values(), key=lambda r: r.get("committed_at", ""))
    return dict(newest.get("producer", {}).get("config", {}))


def resolve_settings(store: DatasetStore, given: dict, *, force: bool = False) -> IngestConfig:
    """The settings of this run: the root's, with ``given`` (only what the user set) on top.

    A given binding setting that differs from the root's is an error unless ``force``.
    """
    given = {k: v for k, v in given.items() if v is not None}
    try:
        IngestConfig.model_validate(given)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, "ingest")) from None
    known = remembered_settings(store)
    if known is None:
        return IngestConfig.model_validate(given)
    root_cfg = IngestConfig.model_validate({k: v for k, v in known.items() if k in IngestConfig.model_fields})
    merged = IngestConfig.model_validate({**root_cfg.model_dump(), **given})
    if not force:
        ours, theirs = _binding(root_cfg), _binding(merged)
        for name in sorted(ours):
            if ours[name] != theirs[name]:
                raise UserError(
                    f"ingest setting {name}: this root ({store.url}) was made with {_show(ours[name])}, "
                    f"given {_show(theirs[name])}; extend it with its own settings (leave {name} out), "
                    f"make a new root, or pass --force to re-ingest every shard with the new value")
    return merged


def save_settings(store: DatasetStore, cfg: IngestConfig) -> None:
    path = store.p(SETTINGS_PATH)
    data = json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    if not store.exists(path) or store.read_bytes(path) != data:
        store.write_bytes_atomic(path, data)


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)
