"""Tokenize figures: prism4m tokenize vs a bare loop, encoder share, token bytes overhead.

- tokenize_efficiency: samples/s of ``prism4m.pipeline.tokenize.tokenize`` with one Ray worker
  (1 CPU, 1 torch thread) ÷ samples/s of a bare single-process loop doing the same work
  (read rgb and crop_settings shards, crop, normalise, batch, encode, write tar shards) with
  1 torch thread, both in this run. Ray's start-up is excluded (``ray_start_s``); the actor's
  start-up and tokenizer load are included. Each side runs twice, alternating; best of two.
- tokenize_efficiency_units: the same with the stage's time in its units only (the bare loop's
  wall ÷ the sum of the actor's unit walls); tokenize_fixed_s is the rest of the stage's wall
  (actor start, torch import, tokenizer load, planning, manifest).
- tokenize_actor_start_s: Ray starting a bare actor that imports the stage (and torch with it),
  measured alone: the floor under the stage's start-up; tokenize_efficiency_ceiling is the
  figure this run's bare loop allows after it alone.
- tokenize_encode_share: share of the bare loop's time in the encoder forward.
- token_bytes_ratio: bytes of token shards ÷ raw int16 payload (samples × crops × tokens ×
  2) with the stage's default gzip'd tars, for the worst case: ids drawn uniformly from the
  whole 8192 vocabulary (an upper bound for any tokenizer of that size; the random-weight
  tokenizer's own shards use few codes and compress far better, reported separately, with
  the same shards as plain tars).
- Ray workers run at the bare loop's priority (RAY_worker_niceness=0; Ray's default is 15). Each tar member costs a 512-byte header, a 128-byte npy
  header and up to 511 bytes of padding, so the ratio falls as crops × tokens grows;
  ``token_bytes_format_floor`` is that per-member minimum for this payload.

The tokenizer is a "small" VQ (ViT dim 256, depth 6, 224 px, 196 tokens) with random
weights: speed does not depend on training. Sizes scale with PRISM4M_BENCH_SCALE.
Standalone: ``python benchmarks/bench_tokenize.py [workdir]`` prints the JSON.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import actor_start_s, generate_jpegs  # noqa: E402  (shared with the other benches)

SCALE = float(os.environ.get("PRISM4M_BENCH_SCALE", "1"))
N_IMAGES = max(16, int(64 * SCALE))
SHARD_SIZE = 32
N_CROPS = 5
INPUT_SIZE = 224
BATCH = 64


def make_tokenizer(out_dir: str) -> str:
    import torch

    from prism4m.modality.specs import get_spec
    from prism4m.pipeline.tokenizer_training import TokenizerTrainConfig, _build

    torch.manual_seed(0)
    tok = _build(get_spec("rgb"), TokenizerTrainConfig(size="small", input_size=INPUT_SIZE, codebook_size=8192), 3)
    tok.card.random_weights = True
    tok.save(out_dir)
    return out_dir


def bare_loop(root: str, tok_dir: str, out_dir: Path, load=None) -> dict:
    """The tokenize work with no Ray, no ledger, no atomic commit: read, crop, batch, encode, write.
    ``load(tok_dir)`` gives the tokenizer (default: a prism4m tokenizer directory)."""
    from prism4m.contract.store import DatasetStore, build_tar
    from prism4m.modality.samples import iter_shard_inputs
    from prism4m.pipeline.tokenize import CropBatchEncoder, token_member
    from prism4m.tokenizers.registry import load_tokenizer

    tok = (load or load_tokenizer)(tok_dir)
    store = DatasetStore(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encode_s = 0.0
    n = 0
    for index in sorted(store.ledger("rgb")):
        enc = CropBatchEncoder(tok, BATCH)
        keys = []
        for s in iter_shard_inputs(store, tok.spec, index):
            keys.append(s.key)
            enc.add(s.key, tok.prepare(s.value, s.rows, s.image_hw, s.region))
        enc.flush()
        encode_s += enc.encode_s
        members = [token_member(k, enc.tokens[k]) for k in keys]
        (out_dir / f"shard-{index:06d}.tar").write_bytes(build_tar(members, "gzip"))  # the stage's default
        n += len(keys)
    wall = time.perf_counter() - t0
    return {"samples": n, "wall_s": wall, "encode_s": encode_s}


def stage_and_bare_runs(root: str, tok_dir: str, wd: Path, load=None, reps: int = 2) -> tuple[list, list]:
    """``reps`` alternating runs of the bare loop and of the tokenize stage (one 1-CPU worker,
    ``force``), each {samples, wall_s}: the two sides of a tokenize efficiency figure."""
    from prism4m.pipeline.tokenize import tokenize

    bare_runs, stage_runs = [], []
    for rep in range(reps):
        bare_runs.append(bare_loop(root, tok_dir, wd / f"bare{rep}", load=load))
        t0 = time.perf_counter()
        summary = tokenize(root, [tok_dir], workers=1, num_cpus=1, force=True, show_progress=False)
        wall = time.perf_counter() - t0
        if not summary.ok:
            raise RuntimeError(f"tokenize failed: {summary.failures}")
        # units_s: the actor's time in its units (read, crop, encode, commit), without its
        # start-up (worker process, torch import, tokenizer load) and the driver's planning
        stage_runs.append({"samples": summary.samples, "wall_s": wall,
                           "units_s": sum(r["wall_s"] for r in summary.results)})
    return bare_runs, stage_runs


def run(workdir: str) -> dict:
    import torch

    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.ray_env import ensure_ray, set_loopback_env
    from prism4m.contract.store import DatasetStore

    set_loopback_env()
    torch.set_num_threads(1)  # the worker gets 1 CPU, hence 1 torch thread: same work, same threads
    wd = Path(workdir)
    generate_jpegs(wd / "images", N_IMAGES, size=(384, 288))
    t_ray = time.perf_counter()
    # Ray starts workers at nice 15; on a machine shared with other jobs that alone halves
    # the actor's CPU share against a nice-0 bare loop. Same priority for both sides.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ensure_ray(num_cpus=os.cpu_count())
    ray_start_s = time.perf_counter() - t_ray
    root = str(wd / "root")
    ingest(str(wd / "images"), root, shard_size=SHARD_SIZE, short_side=256, n_crops=N_CROPS, show_progress=False)
    tok_dir = make_tokenizer(str(wd / "tok_rgb"))

    bare_runs, prism_runs = stage_and_bare_runs(root, tok_dir, wd)
    bare = min(bare_runs, key=lambda r: r["wall_s"])
    prism = min(prism_runs, key=lambda r: r["wall_s"])
    bare_sps = bare["samples"] / bare["wall_s"]
    prism_sps = prism["samples"] / prism["wall_s"]

    store = DatasetStore(root)
    folder = f"tok_rgb@{INPUT_SIZE}"
    ledger = store.ledger(folder)
    token_bytes = sum(f["bytes"] for r in ledger.values() for f in r["files"].values())
    n_samples = sum(r["n_samples"] for r in ledger.values())
    payload = N_CROPS * (INPUT_SIZE // 16) ** 2 * 2
    raw = n_samples * payload
    # what the plain format itself costs per member: 512-byte tar header, 128-byte npy header, 512 padding
    floor = (512 + -(-(128 + payload) // 512) * 512) / payload
    # Compression depends on the tokens (this tokenizer has random weights), so report the
    # same shards as plain tars and, as the worst case, gzip'd tars of ids drawn uniformly
    # from the whole vocabulary (no redundancy for gzip to find but the format's own).
    import numpy as np

    from prism4m.contract.store import build_tar
    from prism4m.pipeline.tokenize import token_member

    plain_bytes, uniform_bytes, counts = 0, 0, np.zeros(8192, dtype=np.int64)
    rng = np.random.default_rng(0)
    for index in sorted(ledger):
        members = store.read_shard(folder, index)
        plain_bytes += len(build_tar(members))
        arrays = [np.load(io.BytesIO(m.data), allow_pickle=False) for m in members]
        for a in arrays:
            counts += np.bincount(a.reshape(-1).astype(np.int64), minlength=8192)
        uniform = [token_member(m.key, rng.integers(0, 8192, a.shape).astype(np.int16))
                   for m, a in zip(members, arrays)]
        uniform_bytes += len(build_tar(uniform, "gzip"))
    p = counts[counts > 0] / counts.sum()
    # The floor under tokenize_efficiency: Ray starting an actor that imports the stage (torch
    # with it), measured alone; the bare loop's process has both already.
    start = actor_start_s(("prism4m.pipeline.tokenize",))
    return {
        "tokenize_actor_start_s": round(start, 2),
        "tokenize_efficiency_ceiling": round(bare["wall_s"] / (bare["wall_s"] + start), 3),
        "tokenize_efficiency": round(prism_sps / bare_sps, 3),
        "tokenize_encode_share": round(bare["encode_s"] / bare["wall_s"], 3),
        # the same without the stage's fixed start-up, which a run this short (~10 s) cannot amortise
        "tokenize_efficiency_units": round(bare["wall_s"] / prism["units_s"], 3),
        "tokenize_fixed_s": round(prism["wall_s"] - prism["units_s"], 2),
        # Headline: the worst case, an upper bound for any tokenizer with this vocabulary (the
        # random-weight tokens below use few codes and compress far better than real ones).
        "token_bytes_ratio": round(uniform_bytes / raw, 3),
        "token_bytes_ratio_random_weight_tokens": round(token_bytes / raw, 3),
        "token_bytes_ratio_plain_tar": round(plain_bytes / raw, 3),
        "token_entropy_bits": round(float(-(p * np.log2(p)).sum()), 2),
        "token_compression": "gzip (default of prism4m tokenize)",
        "tokenize_samples_per_s": round(prism_sps, 2),
        "tokenize_bare_samples_per_s": round(bare_sps, 2),
        "tokenize_wall_s_runs": [round(r["wall_s"], 2) for r in prism_runs],
        "tokenize_bare_wall_s_runs": [round(r["wall_s"], 2) for r in bare_runs],
        "tokenize_samples": n_samples,
        "tokenize_crops_per_sample": N_CROPS,
        "tokenize_tokens_per_crop": (INPUT_SIZE // 16) ** 2,
        "token_bytes_format_floor": round(floor, 3),
        "token_bytes": token_bytes,
        "token_raw_bytes": raw,
        "tokenize_model": "vq small (ViT dim 256, depth 6), random weights, 1 torch thread",
        "ray_start_s": round(ray_start_s, 2),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench_tokenize-") as tmp:
        print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else tmp), indent=2))
