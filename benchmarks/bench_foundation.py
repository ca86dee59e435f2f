"""Foundation figures: ingest throughput, label overhead vs a bare loop, 2-worker speedup, no-op rerun.

All ratios are measured in one run on this machine. Ray's start-up is excluded from the
timed sections and reported as `ray_start_s`. Sizes shrink with PRISM4M_BENCH_SCALE (e.g.
0.1 for a quick look); the committed figures use scale 1.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

SCALE = float(os.environ.get("PRISM4M_BENCH_SCALE", "1"))
N_IMAGES = max(40, int(2000 * SCALE))
N_NOOP_SHARDS = max(20, int(1000 * SCALE))
CHEAP = ["canny_edge", "color_palette", "metadata"]
PAIRS = 3  # interleaved (stage, bare loop) rounds for label_overhead_ratio


def generate_jpegs(d: Path, n: int, size=(1024, 768), seed: int = 0) -> None:
    """Photo-like synthetic images: smooth colour fields plus edges and noise."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC)).copy()
        y0, x0 = rng.integers(0, size[1] // 2), rng.integers(0, size[0] // 2)
        img[y0:y0 + size[1] // 4, x0:x0 + size[0] // 3] = rng.integers(0, 255, 3)
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i:05d}.jpg", quality=90)


def actor_start_s(imports: tuple[str, ...] = (), rounds: int = 3) -> float:
    """Seconds from asking a running Ray for a 1-CPU actor to the end of its ``__init__``, which
    only imports ``imports`` (median of ``rounds``). Ray starts a fresh worker process for every
    actor, so this is the part of a stage's start-up that no worker code can remove: the floor
    under a whole-stage figure of a short run."""
    import importlib

    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def __init__(self, modules: list[str]):
            for m in modules:
                importlib.import_module(m)
            self.t = time.time()

        def started(self) -> float:
            return self.t

    times = []
    for _ in range(rounds):
        t0 = time.time()
        probe = Probe.remote(list(imports))
        times.append(ray.get(probe.started.remote()) - t0)
        ray.kill(probe)
    return statistics.median(times)


def bare_label_loop(root: str, out_dir: Path) -> float:
    """The same work as `prism4m label` for the cheap labelers, in one process with no Ray,
    no ledger and no atomic moves: read rgb shards, decode, label, encode, write tars."""
    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler
    from prism4m.pipeline.label import decode_rgb
    from prism4m.contract.store import DatasetStore, Member, build_tar

    import cv2

    cv2.setNumThreads(1)  # what a 1-CPU label actor gets (ray_env.limit_threads_to_assigned_cpus)
    store = DatasetStore(root)
    labelers = [make_labeler(n) for n in CHEAP]
    t0 = time.perf_counter()
    for s in sorted(store.ledger("rgb")):
        members = store.read_shard("rgb", s)
        sources = {m.key: m.data for m in store.read_shard("source", s)}
        samples = [LabelInput(m.key, decode_rgb(m), {"source": sources[m.key]}) for m in members]
        for lab in labelers:
            payloads = []
            bs = lab.resources.batch_size
            for i in range(0, len(samples), bs):
                payloads += lab.label_batch(samples[i:i + bs])
            data = build_tar([Member(x.key, lab.extension, p) for x, p in zip(samples, payloads)])
            (out_dir / lab.name).mkdir(parents=True, exist_ok=True)
            (out_dir / lab.name / f"shard-{s:06d}.tar").write_bytes(data)
    return time.perf_counter() - t0


def bare_loop_one_cpu(root: str, out_dir: Path) -> float:
    """The bare loop in a fresh process with one CPU's worth of threads, as a 1-CPU Ray actor
    has (Ray sets OMP_NUM_THREADS=1; OpenCV is limited by ray_env.limit_threads_to_assigned_cpus).
    Otherwise numpy/OpenCV threads would quietly give the "single-process" loop both cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bare", root, str(out_dir)],
                          capture_output=True, text=True, env=env, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def run(workdir: str) -> dict:
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label
    from prism4m.pipeline.ray_env import ensure_ray

    wd = Path(workdir)
    out: dict = {"bench_images": N_IMAGES}
    generate_jpegs(wd / "corpus", N_IMAGES)
    out["ray_start_s"] = round(ensure_ray(num_cpus=2), 2)

    for w in (1, 2):
        root = wd / f"ingest{w}w"
        t0 = time.perf_counter()
        s = ingest(str(wd / "corpus"), str(root), shard_size=100, workers=w, show_progress=False)
        dt = time.perf_counter() - t0
        assert s.ok and s.samples_planned == N_IMAGES, s.failures
        out[f"ingest_img_per_s_{w}w"] = round(N_IMAGES / dt, 1)
    t0 = time.perf_counter()
    ingest(str(wd / "corpus"), str(wd / "ingest2w"), shard_size=100, show_progress=False)
    out["ingest_noop_rerun_s"] = round(time.perf_counter() - t0, 3)

    # label: 1 worker, 2 workers, and the bare loop over the same rgb shards, interleaved in
    # PAIRS rounds; each ratio is the median over the rounds (the box is shared and noisy)
    overhead, speedup, rounds = [], [], []
    for i in range(PAIRS):
        walls = {}
        for w in (1, 2):
            root = wd / f"label{w}w"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(wd / "ingest1w", root)
            t0 = time.perf_counter()
            s = label(str(root), CHEAP, workers=w, show_progress=False)
            walls[w] = time.perf_counter() - t0
            assert s.ok, s.failures
        shutil.rmtree(wd / "bare", ignore_errors=True)
        bare = bare_loop_one_cpu(str(wd / "ingest1w"), wd / "bare")
        overhead.append(walls[1] / bare)
        speedup.append(walls[1] / walls[2])
        rounds.append({"stage_1w_s": round(walls[1], 2), "stage_2w_s": round(walls[2], 2), "bare_s": round(bare, 2)})
    out["label_rounds"] = rounds
    out["label_overhead_ratio"] = round(statistics.median(overhead), 3)
    out["label_speedup_2w"] = round(statistics.median(speedup), 3)
    # the label stage and the bare loop must have produced identical tars
    for name in CHEAP:
        for p in sorted((wd / "bare" / name).glob("*.tar")):
            assert p.read_bytes() == (wd / "label1w" / name / p.name).read_bytes(), p

    # a no-op rerun over N committed shards, through the CLI as a user runs it
    small = wd / "small"
    generate_jpegs(small, N_NOOP_SHARDS, size=(64, 48), seed=1)
    noop_root = wd / "noop"
    ingest(str(small), str(noop_root), shard_size=1, short_side=48, n_crops=1, show_progress=False)
    label(str(noop_root), CHEAP, show_progress=False)
    cmd = [sys.executable, "-m", "prism4m.cli", "label", str(noop_root), "-m", ",".join(CHEAP), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out[f"noop_rerun_s_{N_NOOP_SHARDS}_shards"] = round(time.perf_counter() - t0, 3)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout + proc.stderr
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import prism4m.cli"], check=True)
    out["cli_import_s"] = round(time.perf_counter() - t0, 3)
    return out


if __name__ == "__main__":
    import json
    import tempfile

    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        print(bare_label_loop(sys.argv[2], Path(sys.argv[3])))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
