"""Throughput and memory of the sam_instance and clip labelers at the tiny config on CPU.

    python benchmarks/bench_labelers_sam_clip.py [WORKDIR]     # prints JSON

`run(workdir)` writes the tiny random-weight checkpoints of tests/model_fixtures_sam_clip.py in
WORKDIR, then measures each labeler in a fresh subprocess, so a peak RSS is that labeler's
alone (interpreter + torch + library + model + batches):

- label_<name>_img_per_s: images through `label_batch` per second, after one warm-up batch
  (model loading excluded), over real scikit-image photos at their own sizes (300–640 px);
- label_<name>_peak_rss_mb: the subprocess's peak resident set (ru_maxrss).

Configs: sam_instance runs the tests' config (tiny 256-px SAM, 4×4 prompt grid, thresholds 0 so
masks survive and RLE/JSON encoding is exercised; random masks are speckled, which makes RLE
costlier than real masks); clip the tiny 64-px ViT. Tiny models measure the labelers' own
overhead (generator, resizing, encoding), not real-model speed; measure real checkpoints on a
GPU box for projections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 8
IMAGES = {"sam_instance": 8, "clip": 64}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "cat", "coins")
SAM_CONFIG = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def _photos(n: int) -> list:
    import numpy as np
    from skimage import data as skdata

    imgs = []
    for name in PHOTOS:
        img = getattr(skdata, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        imgs.append(np.ascontiguousarray(img, dtype=np.uint8))
    return [imgs[i % len(imgs)] for i in range(n)]


def _child(name: str, config: dict) -> dict:
    """In the subprocess: load once, warm up, time the images, report peak RSS."""
    import resource

    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler

    lab = make_labeler(name, config)
    lab.ensure_setup()
    samples = [LabelInput(f"k{i}", img) for i, img in enumerate(_photos(IMAGES[name]))]
    lab.label_batch(samples[:BATCH])
    t0 = time.perf_counter()
    for i in range(0, len(samples), BATCH):
        lab.label_batch(samples[i:i + BATCH])
    wall = time.perf_counter() - t0
    return {f"label_{name}_img_per_s": round(len(samples) / wall, 2),
            f"label_{name}_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _measure(name: str, config: dict) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, json.dumps(config)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(workdir: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures_sam_clip import build_clip_tiny, build_sam_tiny

    w = Path(workdir)
    out = {}
    out.update(_measure("sam_instance", {"checkpoint": build_sam_tiny(w / "sam"), "device": "cpu", **SAM_CONFIG}))
    out.update(_measure("clip", {"checkpoint": build_clip_tiny(w / "clip"), "device": "cpu"}))
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], json.loads(sys.argv[3]))))
    elif len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
