"""Throughput measured by past runs, read from the ledger: samples / wall_s of each record.

Each ledger record carries the wall time its producer spent on that shard (for labelers:
the model's time plus a share of the shard's decoding). A record is one actor working on one
shard, so samples / wall_s is *per-actor* throughput on the device that ran it; the report
and `estimate` both read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prism4m.contract.store import DatasetStore


@dataclass
class Throughput:
    folder: str
    kind: str                    # labeler | ingest | tokenizer
    producer: str
    records: int = 0
    samples: int = 0
    wall_s: float = 0.0
    rates: list[float] = field(default_factory=list)   # samples / wall_s of each record
    devices: set[str] = field(default_factory=set)

    @property
    def img_per_s(self) -> float:
        """Pooled rate (total samples / total seconds): weighs big shards more than a mean of rates."""
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def device(self) -> str:
        return ", ".join(sorted(self.devices)) if self.devices else "not recorded"


def record_device(rec: dict) -> str | None:
    """Where a record was computed, when the producer wrote it down."""
    model = rec.get("model") or {}
    return rec.get("device") or model.get("device")


def ledger_throughput(store: DatasetStore, ledgers: dict[str, dict[int, dict]] | None = None) -> dict[str, Throughput]:
    """folder → Throughput over every committed record that has a positive wall_s."""
    if ledgers is None:
        ledgers = {f: store.ledger(f) for f in store.ledger_folders()}
    out: dict[str, Throughput] = {}
    for folder, recs in ledgers.items():
        if not recs:
            continue
        producer = next(iter(recs.values())).get("producer", {})
        t = Throughput(folder, producer.get("kind", "?"), producer.get("name", folder))
        for rec in recs.values():
            wall = float(rec.get("wall_s") or 0.0)
            if wall <= 0:
                continue
            n = int(rec.get("n_samples", 0))
            t.records += 1
            t.samples += n
            t.wall_s += wall
            t.rates.append(n / wall)
            dev = record_device(rec)
            if dev:
                t.devices.add(str(dev))
        out[folder] = t
    return out
