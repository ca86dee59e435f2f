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


# ----------------------------------------------------------------------------- real skeletons
# The report's own script records only the first gallery image; this test-only probe, added to
# a copy of the page, records every gallery image's box and natural size per sample key.
IMAGE_PROBE = """<script>window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('#gallery .sample').forEach(function (s) {
    var key = s.querySelector('h3').firstChild.textContent.trim();
    s.querySelectorAll('img').forEach(function (im) {
      var r = im.getBoundingClientRect();
      out.push([key, im.alt, r.left + window.scrollX, r.top + window.scrollY, r.width, r.height,
                im.naturalWidth, im.naturalHeight]);
    });
  });
  document.body.setAttribute('data-test-images', JSON.stringify(out));
});</script>"""


@pytest.fixture(scope="module")
def pose_rendered(photo_root, tmp_path_factory):
    """The report of a root whose human_poses come from BlazePose's real weights (backend
    mediapipe), every sample in the gallery, opened in Chromium."""
    import html
    import json
    import shutil

    from prism4m.contract.store import DatasetStore
    from prism4m.labelers import pose_mediapipe
    from prism4m.pipeline.label import label
    from prism4m.report.html import build_report

    if not all((pose_mediapipe.model_dir() / f).is_file() for f in pose_mediapipe.MODEL_FILES):
        pytest.skip(f"BlazePose models absent: run `{pose_mediapipe.FETCH_COMMAND}`")
    tmp = tmp_path_factory.mktemp("pose_browser")
    root = str(tmp / "ds")
    shutil.copytree(photo_root, root)
    label(root, ["human_poses"], {"human_poses": {"backend": "mediapipe"}}, show_progress=False)
    store = DatasetStore(root)
    n = sum(r["n_samples"] for r in store.ledger("rgb").values())
    index = build_report(root, tmp / "report", n_samples=n, seed=0)
    probed = index.with_name("probed.html")
    probed.write_text(index.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    url = probed.resolve().as_uri()
    dom = _chromium(tmp, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    res = _chromium(tmp, url, f"--screenshot={shot}")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    found = re.search(r'data-test-images="([^"]*)"', dom.stdout)
    assert found, "the probe did not run"
    boxes = {(k, alt): (x, y, w, h, nw, nh) for k, alt, x, y, w, h, nw, nh in json.loads(html.unescape(found.group(1)))}
    samples = {}
    for shard in store.ledger("rgb"):
        poses = {m.key: m.data for m in store.iter_shard("human_poses", shard)}
        for m in store.iter_shard("source", shard):
            src = json.loads(m.data)
            photo = src["uri"].rsplit("/", 1)[-1].split(".")[0]
            samples[photo] = {"key": m.key, "width": src["width"], "poses": json.loads(poses[m.key])}
    return np.asarray(Image.open(shot).convert("RGB")).astype(np.float64), boxes, samples


def _panel(shot, box):
    x, y, w, h, _, _ = (int(round(v)) for v in box)
    assert w > 50 and h > 50 and y + h <= shot.shape[0], ("panel off the screenshot", box)
    return shot[y:y + h, x:x + w]


def test_screenshot_shows_the_astronauts_skeleton(pose_rendered):
    """On screen, the human_poses panel differs from the rgb panel exactly where the skeleton
    runs (between confident keypoints) and not in a corner far from it; a photo without people
    shows its image untouched."""
    from prism4m.report.colors import COCO_SKELETON
    from prism4m.report.render import POSE_MIN_SCORE

    shot, boxes, samples = pose_rendered
    astro = samples["astronaut"]
    persons = astro["poses"]["persons"]
    assert len(persons) == 1
    kp = np.array(persons[0]["keypoints"])
    pose_box, rgb_box = boxes[(astro["key"], "human_poses")], boxes[(astro["key"], "rgb")]
    pose, rgb = _panel(shot, pose_box), _panel(shot, rgb_box)
    h, w = min(pose.shape[0], rgb.shape[0]), min(pose.shape[1], rgb.shape[1])
    diff = np.abs(pose[:h, :w] - rgb[:h, :w]).max(axis=2)
    scale = pose_box[2] / astro["width"]  # image pixels → screen pixels
    drawn = [(a, b) for a, b in COCO_SKELETON if kp[a, 2] >= POSE_MIN_SCORE and kp[b, 2] >= POSE_MIN_SCORE]
    assert (5, 6) in drawn or (6, 5) in drawn, "the shoulders are confident on the astronaut"
    for a, b in drawn:
        mx, my = ((kp[a, :2] + kp[b, :2]) / 2 * scale).round().astype(int)
        near = diff[max(0, my - 2):my + 3, max(0, mx - 2):mx + 3]
        # panels are lossless PNGs of the same image: off the drawings they differ by ~0
        assert near.max() > 25, f"no skeleton line drawn between keypoints {a} and {b} at ({mx}, {my})"
    x0, y0, x1, y1 = (np.array(persons[0]["bbox_xyxy"]) * scale).astype(int)
    corner = diff[: max(1, y0 - 3), : max(1, x0 - 3)] if y0 > 6 and x0 > 6 else diff[y1 + 3:, x1 + 3:]
    if corner.size:
        assert corner.mean() < 3, "the pose panel changed pixels far from the person"
    coffee = samples["coffee"]
    assert coffee["poses"] == {}
    still = np.abs(_panel(shot, boxes[(coffee["key"], "human_poses")]) - _panel(shot, boxes[(coffee["key"], "rgb")]))
    assert still.mean() < 3, "a photo without people got drawings"
