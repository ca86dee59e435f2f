"""What sharing one decoded batch across an actor group saves (issue 3).

The same three labelers run twice over the same rgb shards with one worker: once in one
actor group (each rgb shard read and decoded once for all three) and once as three groups
(each labeler's actor reads and decodes every shard itself).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import generate_jpegs  # noqa: E402

SCALE = float(os.environ.get("PRISM4M_BENCH_SCALE", "1"))
N_IMAGES = max(40, int(400 * SCALE))
CHEAP = ["canny_edge", "color_palette", "metadata"]


def run(workdir: str) -> dict:
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label
    from prism4m.pipeline.ray_env import ensure_ray

    wd = Path(workdir)
    generate_jpegs(wd / "corpus", N_IMAGES)
    ensure_ray(num_cpus=2)
    ingest(str(wd / "corpus"), str(wd / "base"), shard_size=100, show_progress=False)
    walls = {}
    for mode, configs in (("shared", {}), ("separate", {n: {"group": n} for n in CHEAP})):
        root = wd / mode
        shutil.copytree(wd / "base", root)
        t0 = time.perf_counter()
        s = label(str(root), CHEAP, configs, workers=1, show_progress=False)
        walls[mode] = time.perf_counter() - t0
        assert s.ok, s.failures
    # same labels either way
    for name in CHEAP:
        for p in sorted((wd / "shared" / name).glob("*.tar")):
            assert p.read_bytes() == (wd / "separate" / name / p.name).read_bytes()
    return {"decode_sharing_images": N_IMAGES,
            "decode_shared_wall_s": round(walls["shared"], 2),
            "decode_separate_wall_s": round(walls["separate"], 2),
            "decode_sharing_saving": round(1 - walls["shared"] / walls["separate"], 3)}


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(d), indent=2))
