"""Which producer each folder of a root should have now, and what "stale" means.

`label` and `ingest` record, per folder, the producer (labeler or ingest, with its config)
the user last asked for and the folders it reads, in `_plan/producers.json`; they do so even
when they recompute nothing, so that `prism4m label ROOT -c canny_edge.low=50` without
`--update-stale` makes `prism4m status` show the committed shards as stale. Both commands
decide staleness with :func:`is_stale`, so they always agree.
"""

from __future__ import annotations

import json

from prism4m.contract.store import PLAN_DIR, DatasetStore, content_hash, producer_hash

PRODUCERS_PATH = f"{PLAN_DIR}/producers.json"


def recorded_producers(store: DatasetStore) -> dict[str, dict]:
    """folder → {"producer": …, "producer_hash": …, "reads": [folders]} (empty for old roots)."""
    path = store.p(PRODUCERS_PATH)
    return store.read_json(path) if store.exists(path) else {}


def record_producers(store: DatasetStore, entries: dict[str, tuple[dict, list[str]]]) -> None:
    """Record folder → (producer, reads); written only when something changed."""
    old = recorded_producers(store)
    new = dict(old)
    for folder, (producer, reads) in entries.items():
        new[folder] = {"producer": producer, "producer_hash": producer_hash(producer), "reads": sorted(reads)}
    if new != old:
        store.write_bytes_atomic(store.p(PRODUCERS_PATH), json.dumps(new, indent=2, sort_keys=True).encode())


def is_stale(record: dict, current_hash: str, reads, ledgers: dict[str, dict[int, dict]], shard: int) -> bool:
    """A committed shard is stale when its producer is not the current one, or the inputs it
    read are not the ones committed now (recommitted, gone, or a newly available input)."""
    inputs_now = {f: content_hash(ledgers[f][shard]) for f in reads if ledgers.get(f, {}).get(shard) is not None}
    return record.get("producer_hash") != current_hash or record.get("inputs", {}) != inputs_now


def owned_by_other(record: dict, producer: dict) -> bool:
    """The shard was written by another producer (e.g. ingest's own captions in `caption/`)."""
    theirs = record.get("producer", {})
    return (theirs.get("kind"), theirs.get("name")) != (producer.get("kind"), producer.get("name"))
