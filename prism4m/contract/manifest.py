"""`prism4m.json`: a summary of the ledger for humans and other tools (never trusted for planning).

The manifest is derived from the ledger alone, so any command can rebuild it. It records a
fingerprint of the ledger's files (names, sizes, modification times): a command that finds the
fingerprint changed — e.g. a run killed after its last commit but before it rewrote the
manifest — rewrites it, even when it has nothing else to do.
"""

from __future__ import annotations

import hashlib

from prism4m import __version__
from prism4m.contract.store import FORMAT_VERSION, LEDGER_DIR, DatasetStore, now_iso


def summarize_folder(records: dict[int, dict]) -> dict:
    producers = {}
    for rec in records.values():
        producers[rec["producer_hash"]] = rec["producer"]
    return {
        "shards": len(records),
        "samples": sum(r["n_samples"] for r in records.values()),
        "invalid": sum(len(r.get("invalid", [])) for r in records.values()),
        "bytes": sum(f["bytes"] for r in records.values() for f in r["files"].values()),
        "producers": producers,
        "random_weights": any(r.get("random_weights") for r in records.values()),
        "models": {r["producer_hash"]: r["model"] for r in records.values() if r.get("model")},
    }


def ledger_fingerprint(store: DatasetStore) -> str:
    """A digest of every ledger file's name, size and modification stamp (one listing per folder)."""
    h = hashlib.sha256()
    for folder in store.ledger_folders():
        try:
            entries = store.fs.ls(store.p(LEDGER_DIR, folder), detail=True)
        except FileNotFoundError:
            continue
        for e in sorted(entries, key=lambda e: e["name"]):
            stamp = e.get("mtime", e.get("LastModified", e.get("ETag", e.get("last_modified", ""))))
            h.update(f"{e['name']}\0{e.get('size')}\0{stamp}\n".encode())
    return h.hexdigest()[:16]


def update_manifest(store: DatasetStore, **sections) -> dict:
    manifest = store.read_manifest()
    folders = {f: summarize_folder(store.ledger(f)) for f in store.ledger_folders()}
    rgb = folders.get("rgb", {})
    manifest.update({
        "format": FORMAT_VERSION,
        "prism4m_version": __version__,
        "updated_at": now_iso(),
        "n_shards": rgb.get("shards", 0),
        "n_samples": rgb.get("samples", 0),
        "folders": folders,
        "random_weights": any(v["random_weights"] for v in folders.values()),
        "ledger_fingerprint": ledger_fingerprint(store),
    })
    manifest.update(sections)
    store.write_manifest(manifest)
    return manifest


def ensure_manifest(store: DatasetStore, *, force: bool = False, **sections) -> bool:
    """Rewrite the manifest when this run changed the root (``force``) or it no longer
    matches the ledger; also clears writers' orphans from `_tmp/`. True when rewritten."""
    store.clean_tmp()
    if not force and store.read_manifest().get("ledger_fingerprint") == ledger_fingerprint(store):
        return False
    update_manifest(store, **sections)
    return True
