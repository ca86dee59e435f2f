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
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from labeler_throughput import measure_labeler  # noqa: E402

BATCH = 8
IMAGES = {"sam_instance": 8, "clip": 64}
SAM_CONFIG = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def run(workdir: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures_sam_clip import build_clip_tiny, build_sam_tiny

    w = Path(workdir)
    out = {}
    out.update(measure_labeler("sam_instance", {"checkpoint": build_sam_tiny(w / "sam"), "device": "cpu", **SAM_CONFIG},
                               IMAGES["sam_instance"], BATCH))
    out.update(measure_labeler("clip", {"checkpoint": build_clip_tiny(w / "clip"), "device": "cpu"},
                               IMAGES["clip"], BATCH))
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
