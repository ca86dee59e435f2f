"""BlazePose with real weights: mediapipe 0.10.21's pose models run through ai-edge-litert.

The `human_poses` labeler's `backend: mediapipe` (see human_poses.py for the record format).
The mediapipe package itself cannot share our environment (it needs numpy<2), but its wheel
ships Apache-2.0 TFLite models that ai-edge-litert runs with numpy 2:

- `mediapipe/modules/pose_detection/pose_detection.tflite`: the BlazePose person detector
  (224×224 SSD; a face box plus 4 alignment keypoints per person);
- `mediapipe/modules/pose_landmark/pose_landmark_full.tflite`: BlazePose GHUM 3D "full"
  (`model_complexity=1`; 256×256 crop → 33 landmarks, 3-D world landmarks, heatmaps).

`python -m prism4m.labelers.fetch_pose_models` (run by `make setup`) takes the two files out
of the registry's wheel into `model_dir()`, checked against MODEL_FILES' sha256; nothing is
downloaded at run time.

Everything between the two models is mediapipe's graph (`mediapipe/modules/pose_detection/
pose_detection_cpu.pbtxt`, `pose_landmark/pose_detection_to_roi.pbtxt`,
`pose_landmark_by_roi_cpu.pbtxt`, `pose_landmark_by_roi_post_processing.pbtxt` at v0.10.21)
re-implemented here in numpy/OpenCV with the same constants:

1. Letterbox the image to 224×224 (aspect kept, zero border, values in [-1, 1]).
2. Decode 2254 SSD anchors (strides 8/16/32/32/32, fixed size 1, offset 0.5): centre +
   raw/224, scores sigmoid(clip(raw, ±100)); keep scores ≥ `detection_threshold` (0.5, as
   mediapipe's Pose solution's min_detection_confidence);
   weighted NMS (IoU > 0.3: boxes and keypoints averaged by score, top score kept).
3. Per detection, the ROI: centre = keypoint 0 (mid-hip), side = 2·|kp1 − kp0| (kp1 encodes
   the body's circumscribing circle) × 1.25, square in pixels, rotated by
   90° − atan2(−(y1 − y0), x1 − x0) so the body stands upright in the crop.
4. Crop the rotated ROI to 256×256 (bilinear, replicated border, values in [0, 1]); the model
   gives 39 landmarks × (x, y, z, visibility, presence) in crop pixels (the first 33 are the
   pose; 33-38 are auxiliary), a pose-presence probability (poses below
   `presence_threshold`, 0.5 as mediapipe's, are dropped), a 256×256 person-mask logit map, 64×64×39 heatmaps and
   39 world landmarks in metres.
5. Refine x, y from the heatmap (7×7 window around the landmark, sigmoid-weighted mean of cell
   indices, only where the window's peak ≥ 0.5); visibility and presence are sigmoids.
6. Back-project crop → image by the same rotation and scale the crop used; z scales like x;
   world landmarks are rotated by the ROI's rotation (origin: the hips' midpoint).

Where we differ from mediapipe's own graph, on purpose:
- mediapipe's pose graph poses only the first detection (one person per image); we pose every
  detection above the threshold (up to `max_persons`), most confident first, and drop a pose
  whose landmark box mostly repeats a more confident one (`duplicate_iou`).
- mediapipe back-projects in coordinates normalised by image width and height, which its own
  LandmarkProjectionCalculator warns is exact only for square images; we back-project in
  pixels, the exact inverse of the crop, for any aspect ratio.
- no temporal smoothing or ROI tracking (static images).
- the person box (mediapipe has none: its detection box is the face's) is the extent of the
  person mask (probability > 0.5, mapped back through the crop) joined with the visible
  landmarks; the mask itself is not kept.

Coordinates: mediapipe's normalised x, y times the image width, height (0 is the left/top
edge of the image).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism4m.labelers.pose_format import COCO_KEYPOINT_NAMES

MEDIAPIPE_VERSION = "0.10.21"
DETECTOR_FILE = "pose_detection.tflite"
LANDMARK_FILE = "pose_landmark_full.tflite"
#: file → (path inside the mediapipe wheel, sha256): the only weights this backend loads
MODEL_FILES = {
    DETECTOR_FILE: ("mediapipe/modules/pose_detection/pose_detection.tflite",
                    "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
    LANDMARK_FILE: ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                    "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
}
FETCH_COMMAND = "python -m prism4m.labelers.fetch_pose_models"
MODEL_DIR_ENV = "PRISM4M_POSE_MODELS"

#: BlazePose's 33 landmarks (person's left/right), as in pose_landmark_by_roi_cpu.pbtxt
BLAZEPOSE_LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
#: COCO keypoint i is BlazePose landmark BLAZEPOSE_TO_COCO[i]. Every COCO keypoint has a
#: BlazePose landmark of the same name, and both name sides from the person's point of view,
#: so the mapping is by name: a selection, no averaging (COCO's eyes are BlazePose's eye
#: centres, not its inner/outer corners).
BLAZEPOSE_TO_COCO = np.array([BLAZEPOSE_LANDMARKS.index(name) for name in COCO_KEYPOINT_NAMES])

# pose_detection_cpu.pbtxt
DETECTOR_SIZE = 224
ANCHOR_STRIDES = (8, 16, 32, 32, 32)
ANCHORS_PER_CELL_PER_LAYER = 2  # aspect ratio 1.0 + the interpolated scale (also 1.0)
SCORE_CLIP = 100.0
NMS_IOU = 0.3
# pose_detection_to_roi.pbtxt
ROI_SCALE = 1.25
ROI_TARGET_ANGLE = math.pi / 2
# pose_landmark_by_roi_*.pbtxt
LANDMARK_SIZE = 256
N_MODEL_LANDMARKS = 39
N_POSE_LANDMARKS = 33
HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5


def model_dir() -> Path:
    """Where fetch_pose_models puts the files: $PRISM4M_POSE_MODELS, else the user cache."""
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "prism4m" / f"mediapipe-{MEDIAPIPE_VERSION}"


def model_sha256(path: Path) -> str:
    """sha256 of a model file (a few MB: read at once)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x) without overflow for large |x|


# ----------------------------------------------------------------------------- detector
def ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres (x, y) normalised to the 224 input, in the model's output order:
    layers of equal stride share a grid, cells row-major, anchors of a cell consecutive."""
    centres = []
    i = 0
    while i < len(ANCHOR_STRIDES):
        j = i
        while j < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[j] == ANCHOR_STRIDES[i]:
            j += 1
        n = math.ceil(DETECTOR_SIZE / ANCHOR_STRIDES[i])
        ys, xs = np.mgrid[0:n, 0:n]
        grid = np.stack([(xs.ravel() + 0.5) / n, (ys.ravel() + 0.5) / n], axis=1)
        centres.append(np.repeat(grid, (j - i) * ANCHORS_PER_CELL_PER_LAYER, axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def letterbox_matrix(width: int, height: int, size: int) -> tuple[np.ndarray, float, float]:
    """Affine image → size×size tensor (aspect kept, centred), and the padding fractions
    (x, y) of the tensor on each side."""
    side = max(width, height)
    scale = size / side
    tx, ty = (side - width) / 2 * scale, (side - height) / 2 * scale
    return np.array([[scale, 0, tx], [0, scale, ty]], np.float32), (side - width) / 2 / side, (side - height) / 2 / side


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                      threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs (2254, 12), (2254, 1) → boxes (n, 4) xyxy, keypoints (n, 4, 2), scores (n,),
    normalised to the 224 tensor, scores ≥ threshold."""
    scores = sigmoid(np.clip(raw_scores[:, 0], -SCORE_CLIP, SCORE_CLIP))
    keep = scores >= threshold
    raw, anc, scores = raw_boxes[keep] / DETECTOR_SIZE, anchors[keep], scores[keep]
    centre = raw[:, :2] + anc  # anchors have w = h = 1: offsets are just scaled
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4:12].reshape(-1, 4, 2) + anc[:, None, :]
    return boxes, keypoints, scores


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[..., 2:] - boxes[..., :2], 0, None), axis=-1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one xyxy box with each of (n, 4) boxes (0 where both are empty)."""
    inter = _area(np.c_[np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])])
    union = _area(box) + _area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mediapipe's WEIGHTED non-max suppression: each cluster (IoU > threshold with its best
    box) becomes one detection whose box and keypoints are the score-weighted means and whose
    score is the best one's. Most confident first."""
    order = np.argsort(-scores, kind="stable")
    out_b, out_k, out_s = [], [], []
    while len(order):
        top = order[0]
        cluster = iou(boxes[top], boxes[order]) > iou_threshold
        members, w = order[cluster], scores[order[cluster]][:, None]
        out_b.append((boxes[members] * w).sum(0) / w.sum())
        out_k.append((keypoints[members] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[top])
        order = order[~cluster]
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(out_b), np.stack(out_k), np.array(out_s)


# ----------------------------------------------------------------------------- ROI and crop
@dataclass(frozen=True)
class Roi:
    """A square, rotated region of the image in pixels; rotation in radians (mediapipe's sign)."""

    cx: float
    cy: float
    side: float
    rotation: float

    def local_to_image(self, uv: np.ndarray) -> np.ndarray:
        """(…, 2) points in the crop's unit square ([0, 1]², y down) → image pixels."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        d = (uv - 0.5) * self.side
        return np.stack([self.cx + c * d[..., 0] - s * d[..., 1], self.cy + s * d[..., 0] + c * d[..., 1]], -1)

    def crop_matrix(self, size: int) -> np.ndarray:
        """Affine image → size×size crop: the ROI's corners go to the tensor's corners."""
        corners = self.local_to_image(np.array([[0, 0], [1, 0], [0, 1]], np.float64))
        return cv2().getAffineTransform(corners.astype(np.float32),
                                        np.array([[0, 0], [size, 0], [0, size]], np.float32))


def normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def detection_roi(keypoints_px: np.ndarray) -> Roi:
    """The landmark model's ROI from a detection's keypoints (pixels): mid-hip centre, the
    circle through keypoint 1, upright rotation, enlarged by the training margin."""
    (x0, y0), (x1, y1) = keypoints_px[0], keypoints_px[1]
    side = 2.0 * math.hypot(x1 - x0, y1 - y0) * ROI_SCALE
    rotation = normalize_radians(ROI_TARGET_ANGLE - math.atan2(-(y1 - y0), x1 - x0))
    return Roi(float(x0), float(y0), side, rotation)


def refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL,
                        min_confidence: float = HEATMAP_MIN_CONFIDENCE) -> np.ndarray:
    """mediapipe's RefineLandmarksFromHeatmapCalculator: xy (n, 2) in the crop's unit square,
    heatmap (h, w, n) logits → xy moved to the sigmoid-weighted mean cell of a kernel×kernel
    window around it, where the window's peak confidence reaches min_confidence."""
    h, w, _ = heatmap.shape
    out = xy.copy()
    r = (kernel - 1) // 2
    for i, (x, y) in enumerate(xy):
        col, row = int(x * w), int(y * h)  # C++ float→int truncation, as mediapipe
        if not (0 <= col < w and 0 <= row < h):
            continue
        r0, r1, c0, c1 = max(0, row - r), min(h, row + r + 1), max(0, col - r), min(w, col + r + 1)
        conf = sigmoid(heatmap[r0:r1, c0:c1, i].astype(np.float64))
        total = conf.sum()
        if conf.max() >= min_confidence and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i] = ((cols * conf).sum() / w / total, (rows * conf).sum() / h / total)
    return out


def mask_box(mask: np.ndarray, roi: Roi, width: int, height: int) -> np.ndarray | None:
    """xyxy extent, inside the image, of a crop's boolean mask mapped back to image pixels."""
    v, u = np.nonzero(mask)
    if not len(u):
        return None
    xy = roi.local_to_image((np.stack([u, v], 1) + 0.5) / np.array(mask.shape[::-1]))  # cell centres
    xy = xy[(xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)]
    return np.r_[xy.min(0), xy.max(0)] if len(xy) else None


def cv2():
    import cv2 as _cv2

    return _cv2


# ----------------------------------------------------------------------------- the models
@dataclass
class PosePerson:
    """One person: detector score, pose presence, and landmarks in image pixels."""

    score: float                   # detector confidence
    presence: float                # landmark model's pose-presence probability
    landmarks: np.ndarray          # (33, 5): x, y, z (pixels, z scaled like x), visibility, presence
    world_landmarks: np.ndarray    # (33, 3) metres, origin between the hips
    mask_box: np.ndarray | None    # xyxy extent of the person mask inside the image (None: empty)
    roi: Roi

    def box(self, width: int, height: int) -> np.ndarray:
        """xyxy person box: the person mask's extent joined with the visible landmarks (so no
        visible keypoint lies outside its box), clipped to the image. Landmarks alone would
        cut every box at the eyebrows: no landmark marks the top of the head."""
        xy = self.landmarks[self.landmarks[:, 3] >= 0.5, :2]
        if self.mask_box is None and not len(xy):
            xy = self.landmarks[:, :2]
        parts = [np.r_[xy.min(0), xy.max(0)]] if len(xy) else []
        if self.mask_box is not None:
            parts.append(self.mask_box)
        box = np.r_[np.min([b[:2] for b in parts], 0), np.max([b[2:] for b in parts], 0)]
        return np.clip(box, 0, [width, height, width, height])

    def coco_keypoints(self) -> np.ndarray:
        """(17, 3) x, y, score in COCO order; score = BlazePose visibility (in frame and not
        occluded; mediapipe draws a landmark when it is ≥ 0.5)."""
        lm = self.landmarks[BLAZEPOSE_TO_COCO]
        return np.c_[lm[:, :2], lm[:, 3]]

    def extra_fields(self) -> dict:
        """BlazePose's own outputs for the record (rounded like its keypoints: 0.01 px, 1e-4)."""
        return {
            "pose_score": round(self.presence, 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2), round(float(z), 2), round(float(v), 4),
                           round(float(p), 4)] for x, y, z, v, p in self.landmarks],
            "world_landmarks": [[round(float(v), 4) for v in xyz] for xyz in self.world_landmarks],
        }


def missing_models_message(directory: Path, detail: str) -> str:
    return (f"labeler 'human_poses' (backend mediapipe): {detail} in {directory}; install them with "
            f"`{FETCH_COMMAND}` (`make setup` runs it: it downloads mediapipe=={MEDIAPIPE_VERSION} "
            f"from the package index once and keeps only the two .tflite files)")


def check_model_files(directory: Path, verify_pins: bool) -> dict[str, str]:
    """file → sha256 of the two models in `directory`; raises MissingWeightsError naming the
    fetch command when one is absent (or, with verify_pins, not the pinned bytes)."""
    from prism4m.labelers.base import MissingWeightsError

    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if missing:
        raise MissingWeightsError(missing_models_message(directory, f"{' and '.join(missing)} not found"))
    digests = {f: model_sha256(directory / f) for f in MODEL_FILES}
    if verify_pins:
        wrong = [f for f, (_, pinned) in MODEL_FILES.items() if digests[f] != pinned]
        if wrong:
            raise MissingWeightsError(missing_models_message(
                directory, f"{' and '.join(wrong)} differ from mediapipe {MEDIAPIPE_VERSION}'s (sha256)"))
    return digests


class BlazePose:
    """The two TFLite models and mediapipe's graph logic between them (module docstring)."""

    def __init__(self, directory: Path, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.directory = directory
        self.detector = Interpreter(model_path=str(directory / DETECTOR_FILE), num_threads=num_threads)
        self.landmarker = Interpreter(model_path=str(directory / LANDMARK_FILE), num_threads=num_threads)
        self.detector.allocate_tensors()
        self.landmarker.allocate_tensors()
        self.anchors = ssd_anchors()
        det_out = {d["name"]: d for d in self.detector.get_output_details()}
        self._det_boxes, self._det_scores = det_out["Identity"]["index"], det_out["Identity_1"]["index"]
        if tuple(det_out["Identity"]["shape"]) != (1, len(self.anchors), 12):
            raise ValueError(f"{DETECTOR_FILE}: unexpected output shape {det_out['Identity']['shape']}")
        # Output names as in pose_landmark_by_roi_post_processing.pbtxt's split: 0 landmarks,
        # 1 pose flag, 2 segmentation (unused), 3 heatmap, 4 world landmarks.
        lm_out = {d["name"]: d for d in self.landmarker.get_output_details()}
        want = {"Identity": (1, N_MODEL_LANDMARKS * 5), "Identity_1": (1, 1),
                "Identity_2": (1, LANDMARK_SIZE, LANDMARK_SIZE, 1), "Identity_3": (1, 64, 64, N_MODEL_LANDMARKS),
                "Identity_4": (1, N_MODEL_LANDMARKS * 3)}
        for name, shape in want.items():
            if name not in lm_out or tuple(lm_out[name]["shape"]) != shape:
                raise ValueError(f"{LANDMARK_FILE}: output {name} is not {shape}")
        self._lm = {k: lm_out[k]["index"] for k in want}
        self._det_in = self.detector.get_input_details()[0]["index"]
        self._lm_in = self.landmarker.get_input_details()[0]["index"]

    def detect(self, image: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Person detections: keypoints (n, 4, 2) in image pixels and scores (n,), best first."""
        h, w = image.shape[:2]
        m, pad_x, pad_y = letterbox_matrix(w, h, DETECTOR_SIZE)
        cv = cv2()
        tensor = cv.warpAffine(image, m, (DETECTOR_SIZE, DETECTOR_SIZE), flags=cv.INTER_LINEAR,
                               borderMode=cv.BORDER_CONSTANT, borderValue=0)
        tensor = tensor.astype(np.float32) * (2.0 / 255.0) - 1.0
        self.detector.set_tensor(self._det_in, tensor[None])
        self.detector.invoke()
        raw_boxes = self.detector.get_tensor(self._det_boxes)[0]
        raw_scores = self.detector.get_tensor(self._det_scores)[0]
        boxes, keypoints, scores = weighted_nms(*decode_detections(raw_boxes, raw_scores, self.anchors, threshold))
        # letterbox removal, then normalised → pixels
        keypoints = (keypoints - [pad_x, pad_y]) / [1 - 2 * pad_x, 1 - 2 * pad_y] * [w, h]
        return keypoints, scores

    def landmarks(self, image: np.ndarray, roi: Roi) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
        """Pose presence, landmarks (33, 5) in image pixels, world landmarks (33, 3) and the
        person mask's box (xyxy inside the image, None if empty) of one ROI."""
        cv = cv2()
        crop = cv.warpAffine(image, roi.crop_matrix(LANDMARK_SIZE), (LANDMARK_SIZE, LANDMARK_SIZE),
                             flags=cv.INTER_LINEAR, borderMode=cv.BORDER_REPLICATE)
        self.landmarker.set_tensor(self._lm_in, (crop.astype(np.float32) * (1.0 / 255.0))[None])
        self.landmarker.invoke()
        presence = float(self.landmarker.get_tensor(self._lm["Identity_1"])[0, 0])
        raw = self.landmarker.get_tensor(self._lm["Identity"])[0].reshape(N_MODEL_LANDMARKS, 5)
        heatmap = self.landmarker.get_tensor(self._lm["Identity_3"])[0]
        world = self.landmarker.get_tensor(self._lm["Identity_4"])[0].reshape(N_MODEL_LANDMARKS, 3)
        uv = refine_from_heatmap(raw[:, :2] / LANDMARK_SIZE, heatmap)
        xy = roi.local_to_image(uv.astype(np.float64))
        z = raw[:, 2] / LANDMARK_SIZE * roi.side
        lm = np.c_[xy, z, sigmoid(raw[:, 3]), sigmoid(raw[:, 4])][:N_POSE_LANDMARKS]
        c, s = math.cos(roi.rotation), math.sin(roi.rotation)
        world = np.c_[c * world[:, 0] - s * world[:, 1], s * world[:, 0] + c * world[:, 1], world[:, 2]]
        mask = self.landmarker.get_tensor(self._lm["Identity_2"])[0, ..., 0] > 0  # sigmoid > 0.5
        return presence, lm, world[:N_POSE_LANDMARKS], mask_box(mask, roi, *image.shape[1::-1])

    def __call__(self, image: np.ndarray, detection_threshold: float = 0.5, presence_threshold: float = 0.5,
                 max_persons: int = 20, duplicate_iou: float = 0.5) -> list[PosePerson]:
        """Every person in an RGB uint8 image, most confident detection first."""
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        keypoints, scores = self.detect(image, detection_threshold)
        persons: list[PosePerson] = []
        for kp, score in zip(keypoints, scores):
            if len(persons) >= max_persons:
                break
            roi = detection_roi(kp)
            if roi.side <= 1:
                continue
            presence, lm, world, person_box = self.landmarks(image, roi)
            if presence < presence_threshold:
                continue
            person = PosePerson(float(score), presence, lm, world, person_box, roi)
            box = person.box(w, h)
            if persons and iou(box, np.stack([p.box(w, h) for p in persons])).max() > duplicate_iou:
                continue  # a second detection of someone already posed
            persons.append(person)
        return persons
