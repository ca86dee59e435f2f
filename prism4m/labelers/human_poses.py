"""Human poses (`human_poses`): a person detector, then a pose model on every person.

Two backends write the same record (below), chosen by `backend`:

`backend: vitpose` (default): two transformers models, both loaded through
prism4m.labelers.hf (same resolution, offline and random-weights rules as every deep labeler):
- `detector_checkpoint`: any AutoModelForObjectDetection with a "person" class (RT-DETR,
  e.g. PekingU/rtdetr_r50vd_coco_o365; DETR works the same way). Boxes scoring above
  `detector_threshold` whose class name is `person_label` are kept, the `max_persons`
  most confident first.
- `checkpoint`: a VitPoseForPoseEstimation with the 17 COCO keypoints (e.g.
  usyd-community/vitpose-base-simple). Its image processor crops each box (padded by its
  own rule) and maps the heatmap maxima back to image pixels. ViTPose++ (mixture of
  experts) checkpoints run with dataset index 0, the COCO expert.

`backend: mediapipe`: BlazePose with real weights (prism4m.labelers.pose_mediapipe), the
person detector and the "full" landmark model of mediapipe 0.10.21, run on CPU through
ai-edge-litert. `make setup` installs the two files from the package index
(`python -m prism4m.labelers.fetch_pose_models`); `checkpoint` may name another folder holding
them. Reads `detector_threshold`, `max_persons` and `presence_threshold`.

Output (KEY.json), in pixels of the rgb/ image, persons sorted by detector score:

    {"persons": [{"bbox_xyxy": [x0, y0, x1, y1], "score": s,
                  "keypoints": [[x, y, score] × 17]}]}

Keypoints are in COCO order (pose_format.COCO_KEYPOINT_NAMES; left/right are the person's). Their score is
≈0..1: VitPose's heatmap peak, or BlazePose's visibility (in frame and not occluded). Boxes are
clipped to [0, W]×[0, H] and keypoints to the pixel centres [0, W−1]×[0, H−1]: the pose crop
is padded beyond the image, where the model sees nothing. Coordinates are rounded to 0.01 px
and scores to 1e-4 (smaller, stable JSON). An image without a person gives `{}`, which is
also 4M's "no human" record.

With mediapipe, the box is the extent of BlazePose's person mask and visible landmarks
(clipped; landmarks alone stop at the eyebrows), the keypoints are the
BlazePose landmarks of the same name (pose_mediapipe.BLAZEPOSE_TO_COCO), and each person also
keeps BlazePose's own outputs:

    "pose_score": p,                        # pose-presence probability (≥ presence_threshold)
    "landmarks": [[x, y, z, visibility, presence] × 33],   # image pixels, not clipped;
                                            # z: depth scaled like x, < 0 nearer than the hips
    "world_landmarks": [[x, y, z] × 33]     # metres, origin between the hips

Not 4M's full record: ml-4m's human_poses transform also reads `pred_smpl_params`
(global_orient, body_pose, betas), `pred_cam` and `pose_tokenized`, which 4M-21 produced
with HMR2.0 (SMPL body-model fits) and its pose tokenizer. We produce no SMPL parameters,
so ml-4m's own human_poses transform cannot read these files; prism4m's serializer for the
text tokenizer must encode boxes and keypoints itself (e.g. "human v0=… v1=… v2=… v3=…"
followed by keypoint tokens) instead of 4M's `pose`/`global`/`camera`/`shape` groups.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, MissingWeightsError, Resources
from prism4m.contract.members import encode_json
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig, HFModel, load_hf_model
from prism4m.labelers.pose_format import COCO_KEYPOINTS

EXAMPLE_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"


class HumanPosesConfig(HFLabelerConfig):
    backend: Literal["vitpose", "mediapipe"] = Field(
        "vitpose", description="vitpose: transformers detector + VitPose (checkpoints from config); "
        "mediapipe: BlazePose, real weights installed by `make setup` (checkpoint: their folder, optional)")
    presence_threshold: float = Field(
        0.5, ge=0, le=1, description="mediapipe: drop poses whose presence probability is below this")
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
    blazepose: Any = None  # pose_mediapipe.BlazePose (backend mediapipe)

    #: config keys that only one backend reads: the other's output (and staleness) ignores them
    VITPOSE_ONLY = ("detector_checkpoint", "person_label", "pose_batch_size", "dtype")
    MEDIAPIPE_ONLY = ("backend", "presence_threshold")

    @property
    def mediapipe(self) -> bool:
        return self.config.backend == "mediapipe"

    @property
    def resources(self) -> Resources:
        res = super().resources
        if self.mediapipe and self.config.num_gpus is None:
            res = replace(res, num_gpus=0.0)  # TFLite on CPU: a GPU share would only block placement
        return res

    @property
    def device(self) -> str:
        return "cpu" if self.mediapipe else super().device

    def output_config(self) -> dict:
        # vitpose's stays what it was before backends existed, so its committed shards stay fresh
        drop = set(self.VITPOSE_ONLY if self.mediapipe else self.MEDIAPIPE_ONLY)
        return {k: v for k, v in super().output_config().items() if k not in drop}

    def setup(self) -> None:
        if self.mediapipe:
            self._setup_mediapipe()
            return
        try:
            super().setup()
        except MissingWeightsError as exc:
            if self.config.checkpoint:
                raise
            # the one deep labeler with real weights installed: say so to a user who has none
            raise MissingWeightsError(f"{exc} Or use the BlazePose backend, whose weights `make setup` "
                                      f"installs: --config 'human_poses.backend=mediapipe'.") from None
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

    def _setup_mediapipe(self) -> None:
        from prism4m.labelers import pose_mediapipe as mp

        directory = Path(self.config.checkpoint).expanduser() if self.config.checkpoint else mp.model_dir()
        # the default folder must hold mediapipe's exact files; a folder the user names is theirs
        self._model_digests = mp.check_model_files(directory, verify_pins=not self.config.checkpoint)
        self.blazepose = mp.BlazePose(directory, num_threads=max(1, int(self.resources.num_cpus)))

    def _mediapipe_provenance(self) -> dict:
        import hashlib

        from prism4m.labelers import pose_mediapipe as mp
        from prism4m.labelers.base import library_versions

        self.ensure_setup()
        files = {name: {"sha256": self._model_digests[name], "source": f"mediapipe=={mp.MEDIAPIPE_VERSION} wheel: {member}",
                        "path": str(self.blazepose.directory / name)}
                 for name, (member, _) in mp.MODEL_FILES.items()}
        combined = "".join(f"{n}:{f['sha256']}\n" for n, f in sorted(files.items()))
        return {
            "model_id": f"mediapipe=={mp.MEDIAPIPE_VERSION} BlazePose ({' + '.join(files)})",
            "model_class": "BlazePose (pose_detection + pose_landmark_full, TFLite)",
            "weights_sha256": hashlib.sha256(combined.encode()).hexdigest(),
            "files": files,
            "random_weights": False,
            "libraries": library_versions("ai-edge-litert", "numpy", "opencv-python-headless"),
        }

    def model_provenance(self) -> dict:
        if self.mediapipe:
            return self._mediapipe_provenance()
        prov = super().model_provenance()
        detector = self.detector.provenance()
        prov["detector"] = detector
        # one random model makes the whole label random
        prov["random_weights"] = bool(prov["random_weights"] or detector["random_weights"])
        return prov

    # ------------------------------------------------------------------ stages
    def detect_persons(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (boxes (n, 4) xyxy pixels, scores (n,)), most confident first.

        Images are preprocessed one by one and only images of equal processed shape share a
        forward pass: a detector whose processor pads a batch to its largest image (DETR)
        would otherwise see other images' padding, and its boxes and scores would depend on
        the batch (the model card runs one image at a time)."""
        det, proc = self.detector.model, self.detector.processor
        out: list = [None] * len(images)
        for idx, inputs in self.processed_groups(images, processor=proc):
            results = proc.post_process_object_detection(
                det(**inputs), threshold=self.config.detector_threshold,
                target_sizes=[images[i].shape[:2] for i in idx])
            for i, r in zip(idx, results):
                labels = r["labels"].cpu().numpy()
                keep = np.isin(labels, list(self._person_ids))
                boxes = r["boxes"].float().cpu().numpy()[keep]
                scores = r["scores"].float().cpu().numpy()[keep]
                order = np.argsort(-scores, kind="stable")[: self.config.max_persons]
                out[i] = (boxes[order], scores[order])
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
    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        if not self.mediapipe:
            return super().label_batch(batch)  # torch inference mode around predict()
        self.ensure_setup()
        return [encode_json(self._mediapipe_record(s.image)) for s in batch]

    def _mediapipe_record(self, image: np.ndarray) -> dict:
        persons = self.blazepose(image, detection_threshold=self.config.detector_threshold,
                                 presence_threshold=self.config.presence_threshold,
                                 max_persons=self.config.max_persons)
        h, w = image.shape[:2]
        record = pose_record(np.array([p.box(w, h) for p in persons]).reshape(-1, 4),
                             np.array([p.score for p in persons]),
                             np.array([p.coco_keypoints() for p in persons]).reshape(-1, COCO_KEYPOINTS, 3), w, h)
        for out, person in zip(record.get("persons", []), persons):
            out.update(person.extra_fields())
        return record

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
