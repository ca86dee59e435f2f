"""`prism4m.json`: a summary of the ledger for humans and other tools (never trusted for planning)."""

from __future__ import annotations

from prism4m import __version__
from prism4m.pipeline.store import FORMAT_VERSION, DatasetStore, now_iso


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
    })
    manifest.update(sections)
    store.write_manifest(manifest)
    return manifest
