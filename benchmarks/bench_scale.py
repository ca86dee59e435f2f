"""Scale: does the pipeline stay linear from 1,000 to 50,000 samples?

50,000 generated 64×64 JPEGs (each distinct), ingested (short_side 64, shard_size 1000) and
labelled with the cheap labelers (canny_edge, color_palette, metadata). The same job runs on
the first 1,000 files and on all 50,000, each in a fresh driver process with one worker, so
the comparison measures what grows with the corpus (driver planning, listing, the ledger,
per-unit bookkeeping) rather than parallelism. Ray start-up is excluded from both.

Figures:
- `scale_time_ratio_50k`: per-sample wall time (ingest + label) at 50k ÷ at 1k (goal ≤ 1.10);
- `scale_rss_growth`: driver peak RSS at 50k ÷ at 1k − 1 (goal ≤ 0.10);
- raw seconds, per-sample milliseconds and RSS of both runs (after Ray start, peak after
  ingest, peak overall: the split says which stage grows).

Standalone: `python benchmarks/bench_scale.py [WORKDIR] [--n 50000]` prints the JSON.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODALITIES = ["canny_edge", "color_palette", "metadata"]
JOB = dict(shard_size=1000, short_side=64, n_crops=2)
PER_DIR = 1000


def generate_corpus(directory: Path, n: int) -> Path:
    """n distinct 64×64 JPEGs, 1,000 per sub-folder (folder 000 is the 1k corpus)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = directory / f"{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            sub.mkdir(parents=True, exist_ok=True)
        # Low-frequency colour pattern (realistic JPEG size) plus the index in the corner pixels:
        # every file differs, so deduplication keeps all of them.
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((64, 64), Image.BILINEAR)).copy()
        arr[0, :4, 0] = [(i >> s) & 0xFF for s in (0, 8, 16, 24)]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (sub / f"img-{i:06d}.jpg").write_bytes(buf.getvalue())
    return directory


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(source: str, root: str) -> dict:
    """One measured run in this (fresh) process: Ray start excluded, driver RSS measured."""
    from prism4m.pipeline.ray_env import ensure_ray

    ray_s = ensure_ray(num_cpus=2)
    rss_ray = _rss_mb()
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label

    t0 = time.perf_counter()
    s = ingest(source, root, workers=1, show_progress=False, **JOB)
    t1 = time.perf_counter()
    rss_ingest = _rss_mb()
    lab = label(root, MODALITIES, workers=1, show_progress=False)
    t2 = time.perf_counter()
    assert s.ok and lab.ok, (s.failures, lab.failures)
    from prism4m.contract.store import DatasetStore

    # Worker-side seconds per unit (what the actors spent), to split driver/bookkeeping time
    # from the work itself: wall − Σ unit seconds is what the run spent elsewhere.
    ingest_units = [r["wall_s"] for r in DatasetStore(root).ledger("rgb").values()]
    label_units = [r["wall_s"] for rep in lab.reports for r in rep.results]
    return {"samples": s.samples_planned, "ingest_s": t1 - t0, "label_s": t2 - t1, "ray_start_s": ray_s,
            "ingest_unit_s": sum(ingest_units), "label_unit_s": sum(label_units),
            "rss_after_ray_mb": rss_ray, "rss_after_ingest_mb": rss_ingest, "rss_peak_mb": _rss_mb()}


def _measure(source: Path, root: Path) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); import bench_scale as b; "
            "print('@@CHILD@@' + json.dumps(b.child(%r, %r)))" % (str(Path(__file__).parent), str(source), str(root)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("@@CHILD@@"):
            return json.loads(line[len("@@CHILD@@"):])
    raise RuntimeError(f"scale child failed ({proc.returncode}): {proc.stderr[-2000:]}")


def run(workdir: str, n: int = 50_000) -> dict:
    wd = Path(workdir)
    t0 = time.perf_counter()
    corpus = generate_corpus(wd / "corpus", n)
    gen_s = time.perf_counter() - t0
    small = _measure(corpus / "000", wd / "root_1k")
    large = _measure(corpus, wd / f"root_{n // 1000}k")
    assert small["samples"] == PER_DIR and large["samples"] == n, (small["samples"], large["samples"])
    per_small = (small["ingest_s"] + small["label_s"]) / small["samples"]
    per_large = (large["ingest_s"] + large["label_s"]) / large["samples"]
    return {
        "scale_time_ratio_50k": round(per_large / per_small, 3),
        "scale_rss_growth": round(large["rss_peak_mb"] / small["rss_peak_mb"] - 1, 3),
        "scale_n_large": n,
        "scale_ms_per_sample_1k": round(per_small * 1e3, 3),
        "scale_ms_per_sample_50k": round(per_large * 1e3, 3),
        "scale_ingest_s_1k": round(small["ingest_s"], 2),
        "scale_label_s_1k": round(small["label_s"], 2),
        "scale_ingest_s_50k": round(large["ingest_s"], 2),
        "scale_label_s_50k": round(large["label_s"], 2),
        "scale_driver_rss_peak_mb_1k": round(small["rss_peak_mb"], 1),
        "scale_driver_rss_peak_mb_50k": round(large["rss_peak_mb"], 1),
        "scale_driver_rss_after_ray_mb_1k": round(small["rss_after_ray_mb"], 1),
        "scale_driver_rss_after_ray_mb_50k": round(large["rss_after_ray_mb"], 1),
        # Peak so far after ingest (the rest of the peak is the label stage):
        "scale_driver_rss_after_ingest_mb_1k": round(small["rss_after_ingest_mb"], 1),
        "scale_driver_rss_after_ingest_mb_50k": round(large["rss_after_ingest_mb"], 1),
        # Time outside the units (actor start-up, listing, planning, driver bookkeeping):
        "scale_outside_units_s_1k": round(small["ingest_s"] + small["label_s"] - small["ingest_unit_s"]
                                          - small["label_unit_s"], 2),
        "scale_outside_units_s_50k": round(large["ingest_s"] + large["label_s"] - large["ingest_unit_s"]
                                           - large["label_unit_s"], 2),
        # The same ratio on worker-side unit seconds only (no fixed start-up costs at 1k):
        "scale_unit_time_ratio_50k": round(((large["ingest_unit_s"] + large["label_unit_s"]) / large["samples"])
                                           / ((small["ingest_unit_s"] + small["label_unit_s"]) / small["samples"]), 3),
        "scale_corpus_generate_s": round(gen_s, 1),
        "scale_workers": 1,
    }


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 50_000
    if "--n" in sys.argv:
        args = [a for a in args if a != str(n)]
    if args:
        os.makedirs(args[0], exist_ok=True)
        print(json.dumps(run(args[0], n), indent=2))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_scale-") as wd:
            print(json.dumps(run(wd, n), indent=2))
