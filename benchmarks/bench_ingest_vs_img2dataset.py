"""`ingest_vs_img2dataset`: prism4m ingest img/s ÷ img2dataset img/s on the same JPEGs.

2,000 generated 1024×768 JPEGs → short side 512, JPEG quality 95, 2 processes, both timed as
whole commands (start-up included), alternating, median of 3 pairs. img2dataset lives in its
own virtual environment (~/.cache/prism4m/img2dataset-venv, made on first use from PyPI) so
that its pins never touch ours. prism4m runs twice per pair: with its defaults (4:4:4
chroma at quality ≥ 90, bicubic) and with img2dataset's 4:2:0 (`_420`).
Each pair also times both commands on a one-image corpus: their fixed cost per run
(`ingest_one_image_s`: start-up, Ray, actors, commit, exit).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import N_IMAGES, generate_jpegs  # noqa: E402

VENV = Path(os.environ.get("PRISM4M_I2D_VENV", Path.home() / ".cache" / "prism4m" / "img2dataset-venv"))
PAIRS = 3


def _img2dataset() -> Path:
    exe = VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    return exe


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return time.perf_counter() - t0


def run(workdir: str) -> dict:
    wd = Path(workdir)
    exe = _img2dataset()
    generate_jpegs(wd / "corpus", N_IMAGES)
    urls = wd / "urls.txt"
    urls.write_text("".join(f"file://{p}\n" for p in sorted((wd / "corpus").glob("*.jpg"))))
    prism4m = str(Path(sys.executable).with_name("prism4m"))
    generate_jpegs(wd / "one", 1)
    one_url = wd / "one.txt"
    one_url.write_text(f"file://{next((wd / 'one').glob('*.jpg'))}\n")
    ratios, ratios_420, ours, theirs, ours_one, theirs_one = [], [], [], [], [], []
    for i in range(PAIRS):
        theirs_one.append(_timed([str(exe), "--url_list", str(one_url), "--output_folder", str(wd / f"i2d1_{i}"),
                                  "--processes_count", "2", "--image_size", "512", "--resize_mode", "keep_ratio",
                                  "--encode_quality", "95", "--output_format", "webdataset"]))
        ours_one.append(_timed([prism4m, "ingest", str(wd / "one"), str(wd / f"ds1_{i}"), "--short-side", "512",
                                "--jpeg-quality", "95", "-w", "2", "-q"]))
        out = wd / f"i2d{i}"
        t_i2d = _timed([str(exe), "--url_list", str(urls), "--output_folder", str(out), "--processes_count", "2",
                        "--image_size", "512", "--resize_mode", "keep_ratio", "--encode_quality", "95",
                        "--output_format", "webdataset"])
        t_ours = _timed([prism4m, "ingest", str(wd / "corpus"), str(wd / f"ds{i}"), "--short-side", "512",
                         "--jpeg-quality", "95", "-w", "2", "-q"])
        t_420 = _timed([prism4m, "ingest", str(wd / "corpus"), str(wd / f"ds420_{i}"), "--short-side", "512",
                        "--jpeg-quality", "95", "--jpeg-subsampling", "4:2:0", "-w", "2", "-q"])
        ratios.append(t_i2d / t_ours)
        ratios_420.append(t_i2d / t_420)
        ours.append(N_IMAGES / t_ours)
        theirs.append(N_IMAGES / t_i2d)
        for d in (out, wd / f"ds{i}", wd / f"ds420_{i}", wd / f"i2d1_{i}", wd / f"ds1_{i}"):
            shutil.rmtree(d, ignore_errors=True)
    return {"ingest_vs_img2dataset": round(statistics.median(ratios), 3),
            "ingest_vs_img2dataset_420": round(statistics.median(ratios_420), 3),
            "ingest_cli_img_per_s": round(statistics.median(ours), 1),
            "img2dataset_img_per_s": round(statistics.median(theirs), 1),
            "ingest_one_image_s": round(statistics.median(ours_one), 2),
            "img2dataset_one_image_s": round(statistics.median(theirs_one), 2)}


if __name__ == "__main__":
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(d), indent=2))
