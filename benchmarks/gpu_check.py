"""`make gpu-check`: the label stage on a CUDA device, measured — for when a GPU is at hand.

Labels a generated 1024-px root with tiny depth and DINOv2 models on `cuda` through
`prism4m label` (streaming actors, pipeline_depth 3) and reports, per labeler, img/s, the
device's busy fraction while the stage ran (NVML's utilisation sampled every 50 ms when
pynvml is installed) beside the share of wall time inside the labelers' compute step, and
the peak device memory in use (NVML). Without a CUDA device it says so and exits 0.
Figures go to benchmarks/results/gpu_check.json and into latest.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny-model builders the tests use


def _nvml_sampler(stop: threading.Event, samples: list[int], memory: list[int]) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML: the caller falls back to forward-time accounting
        return
    while not stop.is_set():
        samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        memory.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used)  # the actors' memory is not the driver's
        time.sleep(0.05)


def run(workdir: str) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu_check": "no CUDA device on this machine: nothing measured"}
    from bench_foundation import generate_jpegs
    from model_fixtures_hf import build_depth_anything, build_dinov2

    from prism4m.contract.store import DatasetStore
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label
    from prism4m.pipeline.ray_env import ensure_ray

    wd = Path(workdir)
    ensure_ray()
    generate_jpegs(wd / "corpus", 400, size=(1365, 1024))
    root = wd / "root"
    ingest(str(wd / "corpus"), str(root), shard_size=50, short_side=1024, show_progress=False)
    n = sum(r["n_samples"] for r in DatasetStore(str(root)).ledger("rgb").values())
    out = {"gpu_check_device": torch.cuda.get_device_name(0), "gpu_check_images": n}
    models = {"depth": build_depth_anything(wd / "depth"), "dinov2": build_dinov2(wd / "dinov2")}
    for name, ckpt in models.items():
        stop, samples, memory = threading.Event(), [], []
        sampler = threading.Thread(target=_nvml_sampler, args=(stop, samples, memory), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        s = label(str(root), [name], {name: {"checkpoint": ckpt, "device": "cuda", "num_gpus": 1.0,
                                             "pipeline_depth": 3}}, workers=1, show_progress=False, force=True)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        assert s.ok, s.failures
        busy_model = sum(e - b for b, e in (r["compute_span"] for r in s.results)) / wall
        out[f"gpu_{name}_img_per_s"] = round(n / wall, 1)
        out[f"gpu_{name}_busy_fraction"] = round(sum(samples) / 100 / len(samples), 3) if samples else None
        out[f"gpu_{name}_model_time_fraction"] = round(busy_model, 3)
        out[f"gpu_{name}_peak_device_mb"] = round(max(memory) / 2**20) if memory else None
    out["gpu_check_note"] = ("busy_fraction: NVML utilisation while the stage ran (None without pynvml); "
                             "model_time_fraction: share of the stage's wall time inside the labelers' compute "
                             "step (device work plus its host-side launch overhead)")
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        figures = run(d)
    print(json.dumps(figures, indent=2))
    if "gpu_check" in figures:  # no device: nothing to record
        sys.exit(0)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "gpu_check.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    latest = results / "latest.json"
    merged = json.loads(latest.read_text()) if latest.exists() else {}
    merged.update(figures)
    latest.write_text(json.dumps(merged, indent=2, sort_keys=True))
