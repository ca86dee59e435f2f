"""Reference outputs of mediapipe 0.10.21's own pose graph, for tests/test_labelers_pose_mediapipe.py.

mediapipe needs numpy<2, so it cannot run in prism4m's environment; this script runs in a
separate one and writes REFERENCE_JSON, which the tests compare with our re-implementation
(prism4m.labelers.pose_mediapipe) stage by stage:

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install "numpy<2" mediapipe==0.10.21 scikit-image
    /tmp/mpvenv/bin/python tests/mediapipe_reference.py

It runs `mp.solutions.pose`'s graph (pose_landmark_cpu, model_complexity 1 = pose_landmark_full,
static images, no smoothing) and records the first detection (score, 4 keypoints), the ROI it
derives, and the 33 landmarks (x, y, z in pixels, visibility; the Python API does not expose
presence) and world landmarks. The images are built with numpy only, so both environments see
identical pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REFERENCE_JSON = Path(__file__).with_name("mediapipe_reference_0.10.21.json")


def reference_images() -> dict[str, np.ndarray]:
    """Photos with a person at several aspect ratios and orientations, and one without."""
    from skimage import data

    astronaut = data.astronaut()
    return {
        "astronaut": astronaut,
        "astronaut_tall": np.ascontiguousarray(astronaut[:, 50:430]),
        "astronaut_wide": np.pad(astronaut, ((0, 0), (200, 200), (0, 0))),
        "astronaut_rot90": np.ascontiguousarray(np.rot90(astronaut)),
        "camera": np.repeat(data.camera()[..., None], 3, axis=2),
        "coffee": data.coffee(),
    }


def _rounded(value, digits: int = 5):
    """Floats to 5 decimals (0.00001 px / m: far below every tolerance), one image per line."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def main() -> None:
    from mediapipe.python.solution_base import SolutionBase
    from mediapipe.python.solutions import pose as mp_pose

    graph = SolutionBase(
        binary_graph_path=mp_pose._BINARYPB_FILE_PATH,
        side_inputs={"model_complexity": 1, "smooth_landmarks": False, "enable_segmentation": False,
                     "smooth_segmentation": False, "use_prev_landmarks": False},
        calculator_params={"posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": 0.5},
        outputs=["pose_landmarks", "pose_world_landmarks", "pose_detection", "pose_rect_from_detection"])
    out = {}
    for name, img in reference_images().items():
        r = graph.process(img)
        h, w = img.shape[:2]
        if r.pose_detection is None:
            out[name] = None
            continue
        det, roi = r.pose_detection, r.pose_rect_from_detection
        rec = {
            "detection_score": float(det.score[0]),
            "detection_keypoints": [[k.x * w, k.y * h] for k in det.location_data.relative_keypoints],
            "roi": [roi.x_center * w, roi.y_center * h, roi.width * w, roi.rotation],
            "landmarks": None, "world_landmarks": None,
        }
        if r.pose_landmarks is not None:
            rec["landmarks"] = [[lm.x * w, lm.y * h, lm.z * w, lm.visibility] for lm in r.pose_landmarks.landmark]
            rec["world_landmarks"] = [[lm.x, lm.y, lm.z] for lm in r.pose_world_landmarks.landmark]
        out[name] = rec
    lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(_rounded(v))}" for k, v in out.items())
    REFERENCE_JSON.write_text(f'{{"mediapipe": "0.10.21", "images": {{\n{lines}\n}}}}\n')
    print(f"wrote {REFERENCE_JSON}")


if __name__ == "__main__":
    main()
