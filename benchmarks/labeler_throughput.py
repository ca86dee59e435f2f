"""Per-labeler throughput and peak memory, each labeler measured alone in a fresh process.

`measure_labeler(name, config, n_images, batch)` runs this file as a child: it loads the labeler
once (excluded from the timing), warms up on one batch, times `label_batch` over real
scikit-image photos at their own sizes, and reports the child's peak RSS, so a figure is that
labeler's alone (interpreter + libraries + model + batches). Torch runs with as many threads as
the labeler's `num_cpus`, as in a Ray actor (Ray sets OMP_NUM_THREADS from it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "logo", "coins")


def photos(n: int) -> list:
    import numpy as np

    from prism4m.demo import load_photo

    imgs = []
    for name in PHOTOS:
        img = load_photo(name)
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        imgs.append(np.ascontiguousarray(img, dtype=np.uint8))
    return [imgs[i % len(imgs)] for i in range(n)]


def _child(name: str, config: dict, n_images: int, batch: int) -> dict:
    import resource

    import torch

    from prism4m.labelers.base import LabelInput
    from prism4m.labelers.registry import make_labeler

    lab = make_labeler(name, config)
    torch.set_num_threads(max(1, int(lab.resources.num_cpus)))
    lab.ensure_setup()
    samples = [LabelInput(f"k{i}", img) for i, img in enumerate(photos(n_images))]
    lab.label_batch(samples[:batch])  # warm-up: lazy inits, first allocations
    t0 = time.perf_counter()
    for i in range(0, len(samples), batch):
        lab.label_batch(samples[i:i + batch])
    wall = time.perf_counter() - t0
    return {f"label_{name}_img_per_s": round(len(samples) / wall, 2),
            f"label_{name}_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure_labeler(name: str, config: dict, n_images: int = 32, batch: int = 8) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), name, json.dumps(config),
                           str(n_images), str(batch)], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
