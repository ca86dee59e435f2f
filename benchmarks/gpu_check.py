"""`make gpu-check`: the label and tokenize stages on a CUDA device, measured — for when a GPU
is at hand.

Ingests a generated 1024-px root, then runs through the stages' own entry points (streaming
actors, pipeline_depth 3, one actor, one GPU):
- `prism4m label` with a tiny Depth Anything, a tiny DINOv2 and a 1024-px SAM (segment-anything's
  ViT-B architecture, random weights, thresholds at 0 so every prompt's mask goes through the
  whole post-processing: the cost of real masks, not of an empty result);
- `prism4m tokenize` with a random-weight VQ tokenizer ("small", 224 px) on rgb.
Per stage it reports img/s, the device's busy fraction while the stage ran (NVML utilisation
sampled every 50 ms, when pynvml is installed) beside the share of wall time inside the
labelers' compute step, and the peak device memory in use (NVML; torch's own peak of the
driver process is no measure: the actors hold the models). Without a CUDA device it says so
and exits 0. Figures go to benchmarks/results/gpu_check.json and into latest.json.

``--cpu-dry-run`` runs the same code on the CPU at toy sizes (8 small images, the 256-px test
SAM), so that the script itself is checked where no GPU is (tests/test_gpu_check.py); it
records nothing.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tiny-model builders the tests use


@dataclass(frozen=True)
class CheckSize:
    images: int
    image_size: tuple[int, int]  # generated JPEGs (w, h)
    short_side: int
    shard_size: int
    sam_type: str                # segment-anything architecture (random weights)
    sam_points_per_side: int


# 200 images in 8 shards: the streaming worker has shards to overlap; SAM ViT-B's automatic
# masks (32×32 prompts at 1024 px) are the long part, well within a 15-minute device lease.
ON_GPU = CheckSize(images=200, image_size=(1365, 1024), short_side=1024, shard_size=25, sam_type="vit_b",
                   sam_points_per_side=32)
DRY_RUN = CheckSize(images=8, image_size=(320, 240), short_side=128, shard_size=4, sam_type="tiny",
                    sam_points_per_side=4)


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


def _measured(out: dict, name: str, n: int, stage) -> None:
    """Run ``stage()`` (returns a stage summary) and record its figures under ``gpu_<name>_``."""
    stop, samples, memory = threading.Event(), [], []
    sampler = threading.Thread(target=_nvml_sampler, args=(stop, samples, memory), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        summary = stage()
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    assert summary.ok, summary.failures
    spans = [r["compute_span"] for r in summary.results if "compute_span" in r]
    out[f"gpu_{name}_img_per_s"] = round(n / wall, 2)
    out[f"gpu_{name}_wall_s"] = round(wall, 2)
    out[f"gpu_{name}_busy_fraction"] = round(sum(samples) / 100 / len(samples), 3) if samples else None
    out[f"gpu_{name}_model_time_fraction"] = round(sum(e - b for b, e in spans) / wall, 3) if spans else None
    out[f"gpu_{name}_peak_device_mb"] = round(max(memory) / 2**20) if memory else None


def _sam_checkpoint(directory: Path, model_type: str) -> str:
    import torch

    from prism4m.labelers.sam import build_sam

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_sam(model_type).state_dict(), directory / f"sam_{model_type}.pth")
    return str(directory)


def run(workdir: str, dry_run: bool = False) -> dict:
    import torch

    if not dry_run and not torch.cuda.is_available():
        return {"gpu_check": "no CUDA device on this machine: nothing measured"}
    from bench_foundation import generate_jpegs
    from bench_tokenize import make_tokenizer
    from model_fixtures_hf import build_depth_anything, build_dinov2

    from prism4m.contract.store import DatasetStore
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label
    from prism4m.pipeline.ray_env import ensure_ray
    from prism4m.pipeline.tokenize import tokenize

    size = DRY_RUN if dry_run else ON_GPU
    device, num_gpus = ("cpu", 0.0) if dry_run else ("cuda", 1.0)
    wd = Path(workdir)
    ensure_ray()
    generate_jpegs(wd / "corpus", size.images, size=size.image_size)
    root = str(wd / "root")
    ingest(str(wd / "corpus"), root, shard_size=size.shard_size, short_side=size.short_side, show_progress=False)
    n = sum(r["n_samples"] for r in DatasetStore(root).ledger("rgb").values())
    out = {"gpu_check_device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
           "gpu_check_images": n, "gpu_check_short_side": size.short_side, "gpu_check_sam": size.sam_type}
    everywhere = {"device": device, "num_gpus": num_gpus, "pipeline_depth": 3}
    labelers = {
        "depth": {"checkpoint": build_depth_anything(wd / "depth")},
        "dinov2": {"checkpoint": build_dinov2(wd / "dinov2")},
        "sam_instance": {"checkpoint": _sam_checkpoint(wd / "sam", size.sam_type),
                         "points_per_side": size.sam_points_per_side, "pred_iou_thresh": 0.0,
                         "stability_score_thresh": 0.0},
    }
    for name, config in labelers.items():
        _measured(out, name, n, lambda: label(root, [name], {name: {**config, **everywhere}}, workers=1,
                                              show_progress=False, force=True))
    tok_dir = make_tokenizer(str(wd / "tok_rgb"))
    _measured(out, "tokenize_rgb", n, lambda: tokenize(root, [tok_dir], workers=1, num_gpus=num_gpus, force=True,
                                                       show_progress=False))
    out["gpu_check_note"] = ("busy_fraction: NVML utilisation while the stage ran (None without pynvml); "
                             "model_time_fraction: share of the stage's wall time inside the labelers' compute "
                             "step (device work plus its host-side launch overhead; the tokenize worker is not "
                             "staged, so None there); wall times include each stage's actor start and model load")
    return out


if __name__ == "__main__":
    dry = "--cpu-dry-run" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as d:
        figures = run(d, dry_run=dry)
    print(json.dumps(figures, indent=2))
    if dry or "gpu_check" in figures:  # a dry run, or no device: nothing to record
        sys.exit(0)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "gpu_check.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    latest = results / "latest.json"
    merged = json.loads(latest.read_text()) if latest.exists() else {}
    merged.update(figures)
    latest.write_text(json.dumps(merged, indent=2, sort_keys=True))
