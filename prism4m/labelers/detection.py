"""COCO object detection (4M `det`) from a transformers detector (DETR, RT-DETR, ...).

Output JSON: {"instances": [{"boxes": [xmin, ymin, xmax, ymax], "class_name": str,
"score": float}, ...]} with boxes normalised to 0..1 of the full rgb/ image (ml-4m crops them
with albumentations, which takes normalised boxes), class names from the checkpoint's
config.id2label (COCO names for COCO detectors; DETR's "N/A" gap ids are dropped), sorted by
score, highest first; only scores >= `threshold` (default 0.3 — 4M's serializer keeps >= 0.6
later, so lower thresholds only cost space). No detection → {"instances": []}.
"""

from __future__ import annotations

from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.contract.members import encode_json
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig

UNNAMED = {"N/A", ""}


class DetectionConfig(HFLabelerConfig):
    threshold: float = Field(0.3, ge=0, le=1, description="minimum score kept")
    max_instances: int | None = Field(None, ge=1, description="keep at most this many (highest scores)")


class DetectionLabeler(HFLabeler):
    name = "det"
    Config = DetectionConfig
    model_class = "AutoModelForObjectDetection"
    example_checkpoint = "PekingU/rtdetr_r50vd_coco_o365"
    default_resources = Resources(num_cpus=1, num_gpus=0.2, batch_size=16)

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        id2label = self.model.config.id2label
        members: list[bytes | None] = [None] * len(batch)
        # equally shaped images only per forward: DETR's CNN sees a padded image's padding
        for idx, inputs in self.processed_groups([s.image for s in batch]):
            out = self.model(**inputs)
            # no target_sizes: boxes stay relative to each (unpadded) image, i.e. already 0..1
            results = self.processor.post_process_object_detection(out, threshold=self.config.threshold)
            for i, r in zip(idx, results):
                members[i] = encode_json({"instances": self.instances(r, id2label)})
        return members

    def instances(self, result: dict, id2label: dict) -> list[dict]:
        found = []
        for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
            name = id2label.get(int(label), "")
            if name in UNNAMED or score < self.config.threshold:
                continue
            found.append({"boxes": [round(min(max(v, 0.0), 1.0), 5) for v in box],
                          "class_name": name, "score": round(float(score), 5)})
        found.sort(key=lambda d: -d["score"])
        return found[:self.config.max_instances] if self.config.max_instances else found
