"""`prism4m ingest SRC ROOT`: a raw corpus → keyed rgb/, source/, crop_settings/ shards.

Three steps, each restartable:
1. list the source (driver, cheap) and *scan* new files on Ray: read each item's bytes once
   to hash them, so content duplicates are found before any shard is written;
2. plan on the driver: keys, duplicates, shard assignment; the plan is saved in
   `_plan/ingest.parquet` and only ever appended to, so rerunning over a grown corpus adds
   shards at the end and never reshuffles committed ones;
3. ingest shards on Ray actors: decode, orient, convert, resize, re-encode, draw crops,
   commit (tars, error lines, ledger last).
Every input file ends either as a sample or as an error line with a reason code.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from prism4m import __version__
from prism4m.labelers.encoding import encode_json, encode_npy
from prism4m.pipeline.crops import crop_settings
from prism4m.pipeline.execute import run_units
from prism4m.pipeline.images import BadImage, normalize_image
from prism4m.pipeline.progress import Progress
from prism4m.pipeline.sources import SourceFile, UnsafeSource, iter_items, list_source
from prism4m.pipeline.summary import StageSummary
from prism4m.pipeline.store import DatasetStore, Member, producer_hash

PLAN_PATH = "_plan/ingest.parquet"
SCAN_ERRORS = "_errors/ingest/scan.jsonl"
INGEST_FOLDERS = ("rgb", "source", "crop_settings")


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shard_size: int = Field(1000, ge=1, description="samples per shard (ml-4m uses 1,000–10,000)")
    short_side: int = Field(512, ge=32, description="resize so the short side is this (serves 224 and 448 crops)")
    jpeg_quality: int = Field(90, ge=50, le=100)
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
        return self.model_dump(mode="json", exclude={"shard_size", "scan_batch", "max_bytes", "dedup"})


@dataclass
class PlannedItem:
    source_id: str
    file_uri: str
    file_rel: str
    kind: str
    caption_uri: str | None
    sha256: str
    nbytes: int
    key: str
    shard: int                      # -1: not a sample (duplicate)
    duplicate_of: str | None = None
    caption: str | None = None
    member: str | None = None
    duplicates: list[str] = field(default_factory=list)  # source ids with the same bytes


@dataclass
class IngestSummary(StageSummary):
    files_listed: int = 0
    new_items: int = 0
    samples_planned: int = 0
    duplicates: int = 0
    scan_errors: dict[str, int] = field(default_factory=dict)
    skipped_shards: int = 0


_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(source_id: str) -> str:
    """Stable, unique, dot-free key: a readable slug of the name plus a hash of the full id."""
    stem = source_id.rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    slug = _SLUG.sub("_", stem).strip("_")[:40] or "item"
    return f"{slug}-{hashlib.sha1(source_id.encode()).hexdigest()[:12]}"


# ---------------------------------------------------------------------- scan (Ray)
class ScanWorker:
    """Reads each item once to hash it; container errors are reported, not raised."""

    def __init__(self, storage_options: dict | None, max_bytes: int):
        self.so = storage_options
        self.max_bytes = max_bytes

    def ready(self) -> bool:
        return True

    def process(self, files: list[SourceFile]) -> dict:
        items, errors = [], []
        for f in files:
            try:
                for it in iter_items(f, self.so):
                    items.append({"source_id": it.source_id, "file": asdict(f), "member": it.member,
                                  "sha256": hashlib.sha256(it.data).hexdigest(), "nbytes": len(it.data),
                                  "caption": it.caption})
            except UnsafeSource as exc:  # absolute/'..' members, links: refused whole
                errors.append({"source": f.uri, "reason": "unsafe", "message": str(exc)})
            except ValueError as exc:  # unreadable tar / Parquet without image column
                errors.append({"source": f.uri, "reason": "undecodable", "message": str(exc)})
            except OSError as exc:
                errors.append({"source": f.uri, "reason": "unreadable", "message": f"{f.uri}: {exc}"})
        return {"samples": len(items), "items": items, "errors": errors}


# ---------------------------------------------------------------------- ingest (Ray)
@dataclass(frozen=True)
class IngestUnit:
    shard: int  # the worker reads this shard's rows from the saved plan (the driver ships no items)


class IngestWorker:
    def __init__(self, store: DatasetStore, config: dict, source_options: dict | None, has_captions: bool):
        self.store = store
        self.cfg = IngestConfig.model_validate(config)
        self.so = source_options
        self.has_captions = has_captions

    def ready(self) -> bool:
        return True

    def process(self, unit: IngestUnit) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        items = _load_plan_shard(self.store, unit.shard)
        by_file: dict[str, list[dict]] = defaultdict(list)
        for it in items:
            by_file[it["file_uri"]].append(it)
        raw: dict[str, tuple[bytes, str | None]] = {}
        errors: list[dict] = []
        for file_items in by_file.values():
            first = file_items[0]
            f = SourceFile(first["file_uri"], first["file_rel"], first["kind"], first["caption_uri"])
            want = {it["source_id"] for it in file_items}
            try:
                for r in iter_items(f, self.so, want):
                    raw[r.source_id] = (r.data, r.caption)
            except (ValueError, OSError) as exc:
                for it in file_items:
                    errors.append({"key": it["key"], "source": it["source_id"], "reason": "unreadable",
                                   "message": str(exc)})
        outputs: dict[str, list[Member]] = {f: [] for f in INGEST_FOLDERS}
        if self.has_captions:
            outputs["caption"] = []
        failed_keys = {e["key"] for e in errors}
        for it in items:
            if it["source_id"] not in raw:
                if it["key"] not in failed_keys:
                    errors.append({"key": it["key"], "source": it["source_id"], "reason": "unreadable",
                                   "message": f"{it['source_id']}: item vanished from the source"})
                continue
            data, caption = raw[it["source_id"]]
            try:
                if len(data) > cfg.max_bytes:
                    raise BadImage("too_large", f"{it['source_id']}: {len(data):,} bytes exceeds max_bytes")
                if hashlib.sha256(data).hexdigest() != it["sha256"]:
                    raise BadImage("undecodable", f"{it['source_id']}: content changed since the scan")
                img = normalize_image(data, short_side=cfg.short_side, jpeg_quality=cfg.jpeg_quality,
                                      min_side=cfg.min_side, max_pixels=cfg.max_pixels, name=it["source_id"])
            except BadImage as exc:
                errors.append({"key": it["key"], "source": it["source_id"], "reason": exc.reason,
                               "message": str(exc)})
                continue
            key = it["key"]
            crops = crop_settings(key, img.height, img.width, n_crops=cfg.n_crops, seed=cfg.seed,
                                  scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio), hflip_p=cfg.hflip_p)
            source = {"uri": it["file_uri"], "source_id": it["source_id"], "member": it.get("member"),
                      "original_width": img.original_width, "original_height": img.original_height,
                      "original_mode": img.original_mode, "format": img.format,
                      "exif_orientation": img.exif_orientation, "sha256": it["sha256"],
                      "bytes": it["nbytes"], "width": img.width, "height": img.height,
                      "duplicates": it.get("duplicates", [])}
            outputs["rgb"].append(Member(key, "jpg", img.jpeg))
            outputs["source"].append(Member(key, "json", encode_json(source)))
            outputs["crop_settings"].append(Member(key, "npy", encode_npy(crops)))
            if self.has_captions:
                outputs["caption"].append(Member(key, "txt", (caption or "").encode()))
        producer = ingest_producer(cfg)
        records = {f: {"producer": producer, "inputs": {}, "random_weights": False,
                       "wall_s": round(time.perf_counter() - t0, 4)} for f in outputs}
        if self.has_captions:
            records["caption"]["producer"] = {**producer, "name": "source_caption"}
            records["caption"]["invalid"] = [m.key for m in outputs["caption"] if not m.data]
        self.store.commit_unit(unit.shard, outputs, records, {"rgb": errors})
        return {"samples": len(outputs["rgb"]), "shard": unit.shard, "errors": len(errors)}


def ingest_producer(cfg: IngestConfig) -> dict:
    return {"kind": "ingest", "name": "ingest", "config": cfg.output_fields(), "code_version": __version__}


# ---------------------------------------------------------------------- plan (driver)
def _load_plan(store: DatasetStore) -> list[PlannedItem]:
    import pyarrow.parquet as pq

    path = store.p(PLAN_PATH)
    if not store.exists(path):
        return []
    with store.fs.open(path, "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    return [PlannedItem(**r) for r in rows]


def _save_plan(store: DatasetStore, plan: list[PlannedItem]) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([asdict(p) for p in plan])
    buf = io.BytesIO()
    # Shards grow along the rows, so small row groups let a worker read just its own shard.
    pq.write_table(table, buf, row_group_size=2048)
    store.write_bytes_atomic(store.p(PLAN_PATH), buf.getvalue())


def _load_plan_shard(store: DatasetStore, shard: int) -> list[dict]:
    """The plan rows of one shard, in sample order (row-group statistics skip the rest)."""
    import pyarrow.parquet as pq

    with store.fs.open(store.p(PLAN_PATH), "rb") as fh:
        return pq.read_table(fh, filters=[("shard", "==", shard)]).to_pylist()


def _append_scan_errors(store: DatasetStore, lines: list[dict]) -> None:
    if not lines:
        return
    path = store.p(SCAN_ERRORS)
    old = store.read_bytes(path).decode() if store.exists(path) else ""
    seen = {json.loads(x).get("source") for x in old.splitlines() if x.strip()}
    new = "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines if x.get("source") not in seen)
    store.write_bytes_atomic(path, (old + new).encode())


def ingest(source: str, root: str, config: IngestConfig | dict | None = None, *, workers: int | None = None,
           force: bool = False, ray_address: str | None = None, storage_options: dict | None = None,
           source_options: dict | None = None, show_progress: bool = True, max_retries: int = 2,
           **overrides) -> IngestSummary:
    """Ingest ``source`` into the dataset root ``root``. Keyword overrides set IngestConfig fields."""
    t0 = time.perf_counter()
    if isinstance(config, IngestConfig):
        config = config.model_dump()
    cfg = IngestConfig.model_validate({**(config or {}), **overrides})
    store = DatasetStore(root, storage_options)
    summary = IngestSummary()

    files, skipped = list_source(source, source_options)
    summary.files_listed = len(files) + len(skipped)
    plan = _load_plan(store)
    known_files = {p.file_rel for p in plan}
    new_files = [f for f in files if f.rel not in known_files]
    scan_errors = [{"source": s.uri, "reason": s.reason, "message": s.message} for s in skipped]

    def ray_up() -> None:
        if not summary.ray_start_s:
            from prism4m.pipeline.ray_env import ensure_ray

            summary.ray_start_s = ensure_ray(ray_address) or 1e-9

    if new_files:
        ray_up()
        from prism4m.pipeline.ray_env import cluster_cpus

        n_workers = workers or max(1, int(cluster_cpus()))
        batches: list[list[SourceFile]] = []
        cur: list[SourceFile] = []
        for f in new_files:
            if f.kind != "image":
                batches.append([f])
            else:
                cur.append(f)
                if len(cur) >= cfg.scan_batch:
                    batches.append(cur)
                    cur = []
        if cur:
            batches.append(cur)
        report = run_units(batches, ScanWorker, (source_options, cfg.max_bytes), workers=n_workers,
                           max_retries=max_retries, progress=Progress("scan", len(batches), enabled=show_progress))
        summary.reports.append(report)
        # Results come back in completion order; sort to keep planning deterministic.
        scanned = sorted((it for r in report.results for it in r["items"]), key=lambda x: x["source_id"])
        for r in report.results:
            scan_errors.extend(r["errors"])
        for fail in report.failures:
            for f in fail["unit"]:
                scan_errors.append({"source": f.uri, "reason": "unreadable", "message": fail["message"]})
        plan.extend(_plan_new_items(plan, scanned, cfg, scan_errors))
        summary.new_items = len(scanned)
        del scanned
        for r in report.results:  # the plan holds the items now; keep only counts
            r["items"] = len(r["items"])
        _save_plan(store, plan)
    _append_scan_errors(store, scan_errors)
    for e in scan_errors:
        summary.scan_errors[e["reason"]] = summary.scan_errors.get(e["reason"], 0) + 1
    summary.duplicates = sum(1 for p in plan if p.shard < 0)
    summary.samples_planned = sum(1 for p in plan if p.shard >= 0)

    has_captions = any(p.caption for p in plan)
    shards = sorted({p.shard for p in plan if p.shard >= 0})
    current = producer_hash(ingest_producer(cfg))
    folders = INGEST_FOLDERS + (("caption",) if has_captions else ())
    ledgers = {f: store.ledger(f) for f in folders}
    units = []
    for s in shards:
        done = all(ledgers[f].get(s, {}).get("producer_hash") == current for f in folders if f != "caption") and \
            (not has_captions or s in ledgers["caption"])
        if done and not force:
            summary.skipped_shards += 1
            continue
        units.append(IngestUnit(s))
    if units:
        ray_up()
        from prism4m.pipeline.ray_env import cluster_cpus

        n_workers = workers or max(1, int(cluster_cpus()))
        report = run_units(units, IngestWorker, (store, cfg.model_dump(mode="json"), source_options, has_captions),
                           workers=n_workers, max_retries=max_retries,
                           progress=Progress("ingest", len(units), enabled=show_progress),
                           on_failure=lambda u, reason, msg: [store.record_failure(f, u.shard, reason, msg)
                                                              for f in folders])
        summary.reports.append(report)
    if units or new_files or not store.exists(store.p("prism4m.json")):
        from prism4m.pipeline.manifest import update_manifest

        update_manifest(store, ingest={"source": source, "config": cfg.model_dump(mode="json")})
    summary.wall_s = time.perf_counter() - t0
    return summary


def _plan_new_items(plan: list[PlannedItem], scanned: list[dict], cfg: IngestConfig,
                    scan_errors: list[dict]) -> list[PlannedItem]:
    """Keys, duplicates and shards for newly scanned items, appended after the existing plan."""
    by_hash = {p.sha256: p for p in plan if p.shard >= 0}
    keys = {p.key for p in plan}
    # New items always start a new shard: committed shards are never reopened.
    next_shard = max((p.shard for p in plan), default=-1) + 1
    fill = 0
    out: list[PlannedItem] = []
    for it in scanned:
        f = it["file"]
        key = make_key(it["source_id"])
        while key in keys:  # astronomically rare; keep keys unique anyway
            key = make_key(it["source_id"] + "#" + key)
        keys.add(key)
        original = by_hash.get(it["sha256"]) if cfg.dedup and it["nbytes"] > 0 else None
        dup = original.key if original is not None else None
        item = PlannedItem(source_id=it["source_id"], file_uri=f["uri"], file_rel=f["rel"], kind=f["kind"],
                           caption_uri=f["caption_uri"], sha256=it["sha256"], nbytes=it["nbytes"], key=key,
                           shard=-1, duplicate_of=dup, caption=it["caption"], member=it["member"])
        if original is not None:
            original.duplicates.append(it["source_id"])
            scan_errors.append({"source": it["source_id"], "reason": "duplicate", "key": key,
                                "duplicate_of": dup, "message": f"{it['source_id']}: same bytes as sample {dup}"})
        else:
            if it["nbytes"] > 0:
                by_hash[it["sha256"]] = item
            item.shard = next_shard
            fill += 1
            if fill == cfg.shard_size:
                next_shard, fill = next_shard + 1, 0
        out.append(item)
    return out
