"""`prism4m status ROOT`: per folder, its producer and committed / stale / missing / failed shards.

Computed from the ledger and `_plan/producers.json` (no config needed):
- stale: by the rule the label stage plans with (contract/producers.is_stale): the shard's
  producer is not the one last asked for (for folders with no recorded producer: the folder's
  newest), or the inputs it read are not the ones committed now;
- missing: an rgb shard with no record and no failure; failed: a recorded final failure.

A last line counts 4M-21's 19 in_domain keys (contract.modalities.FOURM21_IN_DOMAIN) whose
label folder is committed and current on every rgb shard, how many of those came from random
weights, and which are missing (with the folder that would provide them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prism4m.contract.modalities import FOURM21_IN_DOMAIN
from prism4m.contract.producers import is_stale, recorded_producers
from prism4m.contract.store import DatasetStore
from prism4m.errors import UserError


@dataclass
class FolderStatus:
    folder: str
    producer: str
    random_weights: bool
    committed: int = 0
    stale: int = 0
    missing: int = 0
    failed: int = 0
    samples: int = 0
    invalid: int = 0
    errors: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        return {"folder": self.folder, "producer": self.producer, "random_weights": self.random_weights,
                "committed": self.committed, "stale": self.stale, "missing": self.missing, "failed": self.failed,
                "samples": self.samples, "invalid": self.invalid, "errors": _counts(self.errors)}


@dataclass
class DatasetStatus:
    root: str
    rgb_shards: int
    folders: list[FolderStatus]
    source_errors: Counter
    failures: list[dict]

    @property
    def random_weights(self) -> bool:
        return any(f.random_weights for f in self.folders)

    def fourm21(self) -> dict[str, list[str]]:
        """4M-21's 19 in_domain keys by what the root holds for them: ``labelled`` (their
        folder committed and current on every rgb shard), ``random_weights`` (labelled, by a
        random-weight model or from its output) and ``missing``."""
        by_name = {f.folder: f for f in self.folders}
        out: dict[str, list[str]] = {"labelled": [], "random_weights": [], "missing": []}
        for key, folder in FOURM21_IN_DOMAIN.items():
            f = by_name.get(folder)
            if f is not None and self.rgb_shards and f.committed == self.rgb_shards:
                out["labelled"].append(key)
                if f.random_weights:
                    out["random_weights"].append(key)
            else:
                out["missing"].append(key)
        return out

    def to_json(self) -> dict:
        """The shape `prism4m status --json` prints (plain JSON types only)::

            {"root": url, "rgb_shards": n, "random_weights": bool,
             "folders": [{"folder", "producer", "random_weights", "committed", "stale", "missing",
                          "failed", "samples", "invalid", "errors": {reason: n}}, ...],
             "source_errors": {reason: n},      # input files ingest refused
             "failures": [{"folder", "shard", "reason", "message", "at"}, ...]}
        """
        return {"root": self.root, "rgb_shards": self.rgb_shards, "random_weights": self.random_weights,
                "folders": [f.to_json() for f in self.folders], "source_errors": _counts(self.source_errors),
                "failures": [dict(f) for f in self.failures]}


def _counts(counter: Counter) -> dict[str, int]:
    # Built by hand: dataclasses.asdict rebuilds a Counter from its (key, value) pairs and so
    # counts the tuples, which json cannot encode.
    return {str(k): int(v) for k, v in sorted(counter.items())}


def dataset_status(root: str, storage_options: dict | None = None) -> DatasetStatus:
    store = DatasetStore(root, storage_options)
    ledgers = {f: store.ledger(f) for f in store.ledger_folders()}
    if not ledgers and not store.looks_like_root():  # a typo should not read as "0 rgb shards"
        what = "no _ledger/ or prism4m.json in it" if store.exists(store.path) else "no such directory"
        raise UserError(f"{store.url}: not a prism4m dataset root ({what}); make one with `prism4m ingest SOURCE ROOT`")
    rgb = ledgers.get("rgb", {})
    recorded = recorded_producers(store)
    first = ("rgb", "source", "crop_settings")
    folders = sorted(set(ledgers) | set(_failed_folders(store)),
                     key=lambda f: (first.index(f) if f in first else len(first), f))
    out = []
    failures = []
    for folder in folders:
        recs = ledgers.get(folder, {})
        failed = store.failed_units(folder)
        newest = max(recs.values(), key=lambda r: r.get("committed_at", ""), default=None)
        producer = newest["producer"] if newest else {}
        fs = FolderStatus(folder, _describe(producer), any(r.get("random_weights") for r in recs.values()))
        # The producer the user last asked for (label/ingest record it) decides staleness, with
        # the same rule `label` plans by; folders without one compare with their newest shard.
        wanted = recorded.get(folder)
        for s, rec in recs.items():
            if wanted:
                stale = is_stale(rec, wanted["producer_hash"], wanted["reads"], ledgers, s)
            else:
                stale = is_stale(rec, newest["producer_hash"], list(rec.get("inputs", {})), ledgers, s)
            if stale:
                fs.stale += 1
            else:
                fs.committed += 1
            fs.samples += rec["n_samples"]
            fs.invalid += len(rec.get("invalid", []))
            fs.errors.update(rec.get("errors_by_reason", {}))
        fs.failed = sum(1 for s in failed if s not in recs)
        fs.missing = sum(1 for s in rgb if s not in recs and s not in failed)
        failures += [v for s, v in failed.items() if s not in recs]
        out.append(fs)
    source_errors = Counter(e["reason"] for e in store.read_errors("ingest"))
    return DatasetStatus(store.url, len(rgb), out, source_errors, failures)


def _failed_folders(store: DatasetStore) -> list[str]:
    base = store.p("_errors")
    if not store.exists(base):
        return []
    names = []
    for d in store.fs.ls(base, detail=False):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        if name != "ingest" and store.failed_units(name):
            names.append(name)
    return names


def _describe(producer: dict) -> str:
    if not producer:
        return "-"
    name = producer.get("name", "?")
    cfg = producer.get("config", {})
    ckpt = cfg.get("checkpoint") if isinstance(cfg, dict) else None
    return f"{producer.get('kind', '?')}:{name}" + (f" ({ckpt})" if ckpt else "")


def _partly(f: FolderStatus | None) -> str:
    """Why a folder that exists still counts as missing: its shards that are not current."""
    if f is None:
        return ""
    parts = [f"{n} {what}" for n, what in ((f.stale, "stale"), (f.missing, "not labelled"), (f.failed, "failed"))
             if n]
    return f"; shards {', '.join(parts)}" if parts else ""


def format_status(st: DatasetStatus) -> str:
    head = ["folder", "producer", "committed", "stale", "missing", "failed", "samples", "invalid", "errors"]
    rows = []
    for f in st.folders:
        err = ", ".join(f"{k}={v}" for k, v in sorted(f.errors.items())) or "-"
        producer = f.producer + ("  [RANDOM WEIGHTS]" if f.random_weights else "")
        rows.append([f.folder, producer, f.committed, f.stale, f.missing, f.failed, f.samples, f.invalid, err])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = [f"dataset {st.root}: {st.rgb_shards} rgb shards"]
    lines.append("  ".join(str(h).ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())
    if st.rgb_shards:
        m21 = st.fourm21()
        line = f"4M-21 in-domain modalities: {len(m21['labelled'])}/{len(FOURM21_IN_DOMAIN)} labelled"
        if m21["random_weights"]:
            line += f" ({len(m21['random_weights'])} from RANDOM WEIGHTS)"
        missing: dict[str, list[str]] = {}
        for key in m21["missing"]:
            missing.setdefault(FOURM21_IN_DOMAIN[key], []).append(key)
        if missing:
            by_name = {f.folder: f for f in st.folders}
            line += "; missing folders: " + ", ".join(
                f"{f} ({', '.join(k)}{_partly(by_name.get(f))})" for f, k in missing.items())
        lines.append(line)
    if st.source_errors:
        lines.append("input files not ingested: " + ", ".join(f"{k}={v}" for k, v in sorted(st.source_errors.items())))
    if st.random_weights:
        lines.append("WARNING: some labels come from RANDOM-WEIGHT models (smoke run): not real pseudo-labels.")
    for fail in st.failures:
        lines.append(f"FAILED {fail['folder']}/shard-{fail['shard']:06d}: {fail['reason']}: {fail['message'][:200]}")
    return "\n".join(lines)
