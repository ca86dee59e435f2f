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
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from labeler_throughput import measure_labeler  # noqa: E402

IMAGES = 32
BATCH = 8


def run(workdir: str) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from model_fixtures_pose_caption import build_blip, build_rtdetr, build_vitpose

    w = Path(workdir)
    pose_cfg = {"checkpoint": build_vitpose(w / "vitpose"), "detector_checkpoint": build_rtdetr(w / "rtdetr"),
                "detector_threshold": 0.0, "max_persons": 3, "device": "cpu"}
    caption_cfg = {"checkpoint": build_blip(w / "blip"), "device": "cpu"}
    results = {}
    results.update(measure_labeler("human_poses", pose_cfg, IMAGES, BATCH))
    results.update(measure_labeler("caption", caption_cfg, IMAGES, BATCH))
    return results


if __name__ == "__main__":
    if len(sys.argv) >= 2:
        print(json.dumps(run(sys.argv[1]), indent=2))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(d), indent=2))
