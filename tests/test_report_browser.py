"""The report in a real browser: headless Chromium (Debian's `chromium`, installed by `make browser`)
opens index.html from disk; every image must decode, the gallery must show pixels, and the
panels must be there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report import RANDOM_FOLDER, build_labelled_root

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium absent: run `make browser` (apt-get install chromium)")
WIDTH, HEIGHT = 1400, 3000


def _chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--force-device-scale-factor=1", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
           "--virtual-time-budget=10000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered(photo_root, tmp_path_factory):
    from prism4m.report.html import build_report

    root, _ = build_labelled_root(photo_root, tmp_path_factory.getbasetemp())
    tmp = tmp_path_factory.mktemp("browser")
    index = build_report(root, tmp / "report", n_samples=4, seed=2)
    url = index.resolve().as_uri()
    dom = _chromium(tmp, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    res = _chromium(tmp, url, f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    return dom.stdout, shot


def test_every_image_loads(rendered):
    dom, _ = rendered
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, "the page's load handler did not run"
    assert int(total.group(1)) >= 4 * 10
    assert int(loaded.group(1)) == int(total.group(1))
    assert int(total.group(1)) == len(re.findall(r"<img ", dom))


def test_panels_are_there(rendered):
    dom, _ = rendered
    for sid in ("overview", "gallery", "statistics", "throughput", "provenance", "errors"):
        assert f'<section id="{sid}">' in dom
    assert re.search(r'<div id="random-weights" class="banner">RANDOM WEIGHTS[^<]*' + RANDOM_FOLDER, dom)
    assert dom.count('<div class="sample">') == 4
    assert "<svg" in dom and "label_exception" in dom


def test_screenshot_shows_the_gallery(rendered):
    dom, shot = rendered
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert img.shape[:2] == (HEIGHT, WIDTH)
    x, y, w, h = map(int, re.search(r'data-first-gallery-img="([\d,-]+)"', dom).group(1).split(","))
    assert w > 50 and h > 50 and y + h < HEIGHT, (x, y, w, h)
    first = img[y:y + h, x:x + w]
    assert first.std() > 10, "the first gallery image is blank in the screenshot"
    gallery = img[y:, :]
    colours = np.unique((gallery[::4, ::4] // 16).reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the gallery region is nearly uniform"
