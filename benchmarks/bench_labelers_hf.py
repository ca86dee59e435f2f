"""Throughput, memory and pipeline overhead of the transformers labelers at the tiny config on CPU.

    python benchmarks/bench_labelers_hf.py [WORKDIR]     # prints JSON

`run(workdir)` writes the tiny random-weight checkpoints of tests/model_fixtures_hf.py in WORKDIR
and measures, each in a fresh subprocess (so a peak RSS is that labeler's alone):

- label_<name>_img_per_s for depth, normal (network), dinov2, semseg_coco, det: images through
  `label_batch` per second after one warm-up batch (loading excluded), over real scikit-image
  photos at their own sizes (300–640 px), batch 8;
- label_<name>_peak_rss_mb: the subprocess's peak resident set (ru_maxrss);
- label_overhead_ratio_deep: depth over an ingested root of 200 generated images (4 shards of 50,
  short side 160): wall of `prism4m.pipeline.label.label(..., workers=1)` (Ray already up, so
  actor start, model load, reading, decoding, labelling, committing) ÷ wall of a bare
  single-process loop doing the same work (load model; per shard: read tar, decode JPEGs, batch,
  label_batch, write a tar), both with one torch thread (what Ray gives a 1-CPU actor); best of
  2 alternating runs each. Also reported: both walls in seconds, and the bare loop's start-up
  (imports + model load), which both sides pay once.

Tiny models measure the labelers' own overhead (pre/post-processing, resizing, encoding), not
real-model speed; measure real checkpoints on a GPU box for projections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from labeler_throughput import PHOTOS, measure_labeler, photos  # noqa: E402

BATCH = 8
N_IMAGES = 32
N_OVERHEAD = 200
REPEATS = 2
CPU = {"device": "cpu", "num_gpus": 0, "batch_size": BATCH}


def checkpoints(workdir: Path) -> dict[str, dict]:
    """Labeler configs at the tiny config (the tests' models)."""
    sys.path.insert(0, str(REPO / "tests"))
    import model_fixtures_hf as fx

    return {
        "depth": {"checkpoint": fx.build_depth_anything(workdir / "depth")},
        "normal": {"checkpoint": fx.build_dpt_normals(workdir / "normal")},
        "dinov2": {"checkpoint": fx.build_dinov2(workdir / "dinov2"), "input_size": 56},
        "semseg_coco": {"checkpoint": fx.build_mask2former(workdir / "semseg")},
        "det": {"checkpoint": fx.build_detr(workdir / "det")},
    }


# ----------------------------------------------------------------------------- subprocess bodies
def local_ray() -> None:
    """A private local Ray: address="local" never joins another session's cluster on this machine
    (plain ray.init() does, when one was started with `ray start` or ray.cluster_utils)."""
    from prism4m.pipeline.ray_env import set_loopback_env

    set_loopback_env()
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 2**20)


def child_pipeline(root: str, config: dict) -> dict:
    from prism4m.pipeline.label import label

    local_ray()
    t0 = time.perf_counter()
    summary = label(root, ["depth"], {"depth": {**config, **CPU}}, workers=1, force=True, show_progress=False)
    wall = time.perf_counter() - t0
    if not summary.ok:
        raise RuntimeError(f"label failed: {summary.failures}")
    return {"wall_s": wall, "samples": summary.samples}


def child_bare(root: str, out_dir: str, config: dict) -> dict:
    """The same work without the pipeline: plain tarfile, PIL, the labeler, a tar per shard."""
    import io
    import tarfile

    t0 = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    # the Ray actor (num_cpus=1) runs with OMP_NUM_THREADS=1; compare like with like
    torch.set_num_threads(1)

    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.depth import DepthLabeler

    lab = DepthLabeler({**config, **CPU})
    lab.ensure_setup()
    t_loop = time.perf_counter()
    n = 0
    for shard in sorted(Path(root, "rgb").glob("shard-*.tar")):
        with tarfile.open(shard) as tf:
            members = [(m.name.split(".", 1)[0], tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
        samples = [LabelInput(k, np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for k, b in members]
        outputs = []
        for i in range(0, len(samples), BATCH):
            outputs += lab.label_batch(samples[i:i + BATCH])
        with tarfile.open(Path(out_dir, shard.name), "w", format=tarfile.USTAR_FORMAT) as tf:
            for s, data in zip(samples, outputs):
                info = tarfile.TarInfo(f"{s.key}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        n += len(samples)
    end = time.perf_counter()
    return {"wall_s": end - t0, "loop_s": end - t_loop, "samples": n}


def _sub(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                          capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver
def generated_corpus(directory: Path, n: int) -> Path:
    """n JPEGs: random crops of the photos at varied sizes and aspect ratios (seeded)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    base = photos(len(PHOTOS))  # the shared photo set
    for i in range(n):
        img = base[i % len(base)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        Image.fromarray(img[top:top + ch, left:left + cw]).save(directory / f"img{i:04d}.jpg", quality=90)
    return directory


def overhead(workdir: Path, config: dict) -> dict:
    from prism4m.pipeline.ingest import ingest

    local_ray()
    root = workdir / "root"
    ingest(str(generated_corpus(workdir / "corpus", N_OVERHEAD)), str(root), shard_size=50, short_side=160,
           show_progress=False)
    import ray

    ray.shutdown()  # the pipeline child starts its own
    (workdir / "bare_out").mkdir(exist_ok=True)
    bares, pipes = [], []
    for _ in range(REPEATS):  # alternate, keep the best of each: the box may be shared
        bares.append(_sub("bare", str(root), str(workdir / "bare_out"), json.dumps(config)))
        pipes.append(_sub("pipeline", str(root), json.dumps(config)))
    bare = min(bares, key=lambda r: r["wall_s"])
    pipe = min(pipes, key=lambda r: r["wall_s"])
    if pipe["samples"] != bare["samples"]:
        raise RuntimeError(f"pipeline labelled {pipe['samples']} samples, bare loop {bare['samples']}")
    return {"label_overhead_ratio_deep": round(pipe["wall_s"] / bare["wall_s"], 3),
            "label_overhead_deep_pipeline_s": round(pipe["wall_s"], 2),
            "label_overhead_deep_bare_s": round(bare["wall_s"], 2),
            "label_overhead_deep_bare_startup_s": round(bare["wall_s"] - bare["loop_s"], 2),
            "label_overhead_deep_images": bare["samples"]}


def run(workdir: str) -> dict:
    w = Path(workdir)
    configs = checkpoints(w)
    out: dict = {}
    for name, cfg in configs.items():
        out.update(measure_labeler(name, {**cfg, **CPU}, N_IMAGES, BATCH))
    out.update(overhead(w, configs["depth"]))
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        kind, args = sys.argv[2], sys.argv[3:]
        body = {"pipeline": lambda: child_pipeline(args[0], json.loads(args[1])),
                "bare": lambda: child_bare(args[0], args[1], json.loads(args[2]))}[kind]
        print(json.dumps(body()))
    elif len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
