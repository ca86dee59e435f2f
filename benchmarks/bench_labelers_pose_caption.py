"""Throughput and memory of the human_poses and caption labelers at the tiny config on CPU.

    python benchmarks/bench_labelers_pose_caption.py [WORKDIR]     # prints JSON

`run(workdir)` builds the tiny random-weight checkpoints of tests/model_fixtures_pose_caption.py
in WORKDIR, then measures each labeler in a fresh subprocess (so peak RSS is that labeler's
alone: interpreter + torch + transformers + model + one batch):

- label_<name>_img_per_s: images through `label_batch` per second (batches of BATCH, after
  one warm-up batch; model loading excluded), over IMAGES real photos from scikit-image at
  their own sizes (300–640 px);
- label_<name>_peak_rss_mb: the subprocess's peak resident set (ru_maxrss).

torch gets as many threads as the labeler's declared CPUs (1), as in a Ray actor.

human_poses runs with detector_threshold 0 and max_persons 3 so that every image has three
persons to pose (random weights find no confident person); caption uses BLIP's defaults
(3 beams, 5–20 new tokens). Tiny models measure the labeler's own overhead (processors,
post-processing, encoding), not real-model speed; run on a GPU box with real checkpoints
for projections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = 32
BATCH = 8
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "logo", "cat")


def _photos(n: int):
    import numpy as np
    from skimage import data as skdata

    out = []
    for name in PHOTOS:
        img = getattr(skdata, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return [out[i % len(out)] for i in range(n)]


def _child(name: str, config: dict) -> dict:
    """Runs in the subprocess: load once, warm up, time IMAGES images, report peak RSS."""
    import resource

    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler

    import torch

    labeler = make_labeler(name, config)
    # as in a Ray actor, which sets OMP_NUM_THREADS to the actor's CPUs
    torch.set_num_threads(max(1, int(labeler.resources.num_cpus)))
    labeler.ensure_setup()
    samples = [LabelInput(key=f"k{i}", image=img) for i, img in enumerate(_photos(IMAGES))]
    labeler.label_batch(samples[:BATCH])  # warm-up: lazy inits, allocator
    t0 = time.perf_counter()
    for start in range(0, len(samples), BATCH):
        labeler.label_batch(samples[start:start + BATCH])
    wall = time.perf_counter() - t0
    return {f"label_{name}_img_per_s": round(len(samples) / wall, 2),
            f"label_{name}_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _measure(name: str, config: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(config)],
                          capture_output=True, text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(workdir: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures_pose_caption import build_blip, build_rtdetr, build_vitpose

    w = Path(workdir)
    pose_cfg = {"checkpoint": build_vitpose(w / "vitpose"), "detector_checkpoint": build_rtdetr(w / "rtdetr"),
                "detector_threshold": 0.0, "max_persons": 3, "device": "cpu"}
    caption_cfg = {"checkpoint": build_blip(w / "blip"), "device": "cpu"}
    results = {}
    results.update(_measure("human_poses", pose_cfg))
    results.update(_measure("caption", caption_cfg))
    return results


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], json.loads(sys.argv[3]))))
    elif len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
