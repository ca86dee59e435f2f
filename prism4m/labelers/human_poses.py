"""Human poses (`human_poses`): a person detector, then VitPose on every person box.

Two transformers models, both loaded through prism4m.labelers.hf (same resolution, offline
and random-weights rules as every deep labeler):
- `detector_checkpoint`: any AutoModelForObjectDetection with a "person" class (RT-DETR,
  e.g. PekingU/rtdetr_r50vd_coco_o365; DETR works the same way). Boxes scoring above
  `detector_threshold` whose class name is `person_label` are kept, the `max_persons`
  most confident first.
- `checkpoint`: a VitPoseForPoseEstimation with the 17 COCO keypoints (e.g.
  usyd-community/vitpose-base-simple). Its image processor crops each box (padded by its
  own rule) and maps the heatmap maxima back to image pixels. ViTPose++ (mixture of
  experts) checkpoints run with dataset index 0, the COCO expert.

Output (KEY.json), in pixels of the rgb/ image, persons sorted by detector score:

    {"persons": [{"bbox_xyxy": [x0, y0, x1, y1], "score": s,
                  "keypoints": [[x, y, score] × 17]}]}

Keypoints are in COCO order (nose, left_eye, right_eye, left_ear, right_ear, left_shoulder,
right_shoulder, left_elbow, right_elbow, left_wrist, right_wrist, left_hip, right_hip,
left_knee, right_knee, left_ankle, right_ankle); their score is the heatmap peak (≈0..1
for trained weights). Boxes are clipped to [0, W]×[0, H] and keypoints to the pixel
centres [0, W−1]×[0, H−1]: the pose crop is padded beyond the image, where the model sees
nothing. Coordinates are rounded to 0.01 px and scores to 1e-4 (smaller, stable JSON).
An image without a person gives `{}`, which is also 4M's "no human" record.

Not 4M's full record: ml-4m's human_poses transform also reads `pred_smpl_params`
(global_orient, body_pose, betas), `pred_cam` and `pose_tokenized`, which 4M-21 produced
with HMR2.0 (SMPL body-model fits) and its pose tokenizer. We produce no SMPL parameters,
so ml-4m's own human_poses transform cannot read these files; prism4m's serializer for the
text tokenizer must encode boxes and keypoints itself (e.g. "human v0=… v1=… v2=… v3=…"
followed by keypoint tokens) instead of 4M's `pose`/`global`/`camera`/`shape` groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.contract.members import encode_json
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig, HFModel, load_hf_model

COCO_KEYPOINTS = 17
EXAMPLE_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"


class HumanPosesConfig(HFLabelerConfig):
    detector_checkpoint: str | None = Field(
        None, description="person detector: local directory or hub id (AutoModelForObjectDetection)")
    detector_threshold: float = Field(0.5, ge=0, le=1, description="keep person boxes scoring above this")
    person_label: str = Field("person", description="detector class name of a person (case-insensitive)")
    max_persons: int = Field(20, ge=1, description="most confident persons kept per image")
    pose_batch_size: int = Field(64, ge=1, description="person crops per VitPose forward pass")


class HumanPosesLabeler(HFLabeler):
    name = "human_poses"
    extension = "json"
    Config = HumanPosesConfig
    model_class = "VitPoseForPoseEstimation"
    processor_class = "AutoImageProcessor"
    example_checkpoint = "usyd-community/vitpose-base-simple"
    default_resources = Resources(num_cpus=1, num_gpus=0.1, batch_size=16)

    detector: HFModel | None = None

    def setup(self) -> None:
        super().setup()
        if self.model.config.num_labels != COCO_KEYPOINTS:
            raise ValueError(f"human_poses: {self.config.checkpoint!r} predicts {self.model.config.num_labels} "
                             f"keypoints; the format needs the {COCO_KEYPOINTS} COCO keypoints")
        self.detector = load_hf_model(
            self.name, self.config.detector_checkpoint, EXAMPLE_DETECTOR, "AutoModelForObjectDetection",
            "AutoImageProcessor", device=self.device, dtype=self.config.dtype, config_key="detector_checkpoint")
        wanted = self.config.person_label.lower()
        id2label = self.detector.model.config.id2label
        self._person_ids = {int(i) for i, n in id2label.items() if str(n).lower() == wanted}
        if not self._person_ids:
            raise ValueError(f"human_poses: detector {self.config.detector_checkpoint!r} has no class named "
                             f"{self.config.person_label!r} (set `person_label`)")

    def model_provenance(self) -> dict:
        prov = super().model_provenance()
        detector = self.detector.provenance()
        prov["detector"] = detector
        # one random model makes the whole label random
        prov["random_weights"] = bool(prov["random_weights"] or detector["random_weights"])
        return prov

    # ------------------------------------------------------------------ stages
    def detect_persons(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (boxes (n, 4) xyxy pixels, scores (n,)), most confident first."""
        det, proc = self.detector.model, self.detector.processor
        inputs = self.to_device(proc(images=images, return_tensors="pt"))
        outputs = det(**inputs)
        results = proc.post_process_object_detection(
            outputs, threshold=self.config.detector_threshold, target_sizes=[im.shape[:2] for im in images])
        out = []
        for r in results:
            labels = r["labels"].cpu().numpy()
            keep = np.isin(labels, list(self._person_ids))
            boxes = r["boxes"].float().cpu().numpy()[keep]
            scores = r["scores"].float().cpu().numpy()[keep]
            order = np.argsort(-scores, kind="stable")[: self.config.max_persons]
            out.append((boxes[order], scores[order]))
        return out

    def estimate_poses(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Per image with boxes: keypoints (n, 17, 3) as x, y, score in image pixels."""
        coco_boxes = [np.c_[b[:, :2], b[:, 2:] - b[:, :2]] for b in boxes]  # processor wants x, y, w, h
        # flatten (image, box) pairs so that pose_batch_size bounds the crops per forward pass
        pairs = [(i, j) for i, b in enumerate(coco_boxes) for j in range(len(b))]
        flat: list[np.ndarray] = []
        for start in range(0, len(pairs), self.config.pose_batch_size):
            chunk = pairs[start:start + self.config.pose_batch_size]
            chunk_images = sorted({i for i, _ in chunk})
            chunk_boxes = [[coco_boxes[i][j] for ii, j in chunk if ii == i] for i in chunk_images]
            flat.extend(self._pose_forward([images[i] for i in chunk_images], chunk_boxes))
        out, k = [], 0
        for b in coco_boxes:
            out.append(np.stack(flat[k:k + len(b)]))
            k += len(b)
        return out

    def _pose_forward(self, images: list[np.ndarray], boxes: list[list[np.ndarray]]) -> list[np.ndarray]:
        inputs = self.to_device(self.processor(images=images, boxes=boxes, return_tensors="pt"))
        extra: dict[str, Any] = {}
        if getattr(self.model.config.backbone_config, "num_experts", 1) > 1:
            import torch

            extra["dataset_index"] = torch.zeros(len(inputs["pixel_values"]), dtype=torch.long,
                                                 device=inputs["pixel_values"].device)
        outputs = self.model(**inputs, **extra)
        outputs.heatmaps = outputs.heatmaps.float()  # post-processing runs in numpy float32
        results = self.processor.post_process_pose_estimation(outputs, boxes=boxes)
        return [np.c_[p["keypoints"].cpu().numpy().reshape(-1, 2), p["scores"].cpu().numpy().reshape(-1)]
                for per_image in results for p in per_image]

    # ------------------------------------------------------------------ encode
    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        images = [s.image for s in batch]
        detections = self.detect_persons(images)
        with_people = [i for i, (b, _) in enumerate(detections) if len(b)]
        poses = dict(zip(with_people, self.estimate_poses([images[i] for i in with_people],
                                                          [detections[i][0] for i in with_people])))
        members = []
        for i, (boxes, scores) in enumerate(detections):
            h, w = images[i].shape[:2]
            members.append(encode_json(pose_record(boxes, scores, poses.get(i), w, h)))
        return members


def pose_record(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray | None, width: int, height: int) -> dict:
    """The JSON record of one image; `{}` without persons (4M's convention)."""
    if len(boxes) == 0:
        return {}
    boxes = np.clip(boxes, 0, [width, height, width, height])
    xy = np.clip(keypoints[..., :2], 0, [width - 1, height - 1])
    persons = []
    for box, score, pts, kscore in zip(boxes, scores, xy, keypoints[..., 2]):
        persons.append({
            "bbox_xyxy": [round(float(v), 2) for v in box],
            "score": round(float(score), 4),
            "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                          for (x, y), s in zip(pts, kscore)],
        })
    return {"persons": persons}
