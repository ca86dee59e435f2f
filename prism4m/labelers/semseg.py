"""COCO panoptic semantic classes (4M `semseg_coco`) from transformers' Mask2Former.

The model's panoptic segmentation (processor.post_process_panoptic_segmentation) is turned
into a per-pixel class map: each pixel gets the class id (0..132, the contiguous COCO-panoptic
ids of facebook/mask2former-*-coco-panoptic's id2label: 80 things, then 53 stuff) of the
segment covering it, or 255 where no segment survived the thresholds.
Output: 8-bit single-channel PNG at the rgb/ resolution. ml-4m's SemsegTransform adds 1 in
uint8, so 255 becomes its "no class" 0 and class k becomes k+1 (134 labels).

Images are processed one by one and only equally shaped ones share a forward pass (padding one
image to another's size would change its prediction); the processor's size_divisor padding is
cropped from the mask logits before post-processing, so class maps stay aligned with the rgb
pixels.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.contract.members import encode_png
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig

NO_CLASS = 255


class SemsegCocoConfig(HFLabelerConfig):
    threshold: float = Field(0.5, ge=0, le=1, description="minimum segment class score")
    mask_threshold: float = Field(0.5, ge=0, le=1, description="mask probability to count a pixel as in a mask")
    overlap_mask_area_threshold: float = Field(0.8, ge=0, le=1,
                                               description="drop segments that keep less than this share of their mask")


class SemsegCocoLabeler(HFLabeler):
    name = "semseg_coco"
    Config = SemsegCocoConfig
    model_class = "Mask2FormerForUniversalSegmentation"
    example_checkpoint = "facebook/mask2former-swin-base-coco-panoptic"
    default_resources = Resources(num_cpus=1, num_gpus=0.25, batch_size=8)

    def setup(self) -> None:
        super().setup()
        if self.model.config.num_labels >= NO_CLASS:
            raise ValueError(f"semseg_coco stores class ids in 8 bits with {NO_CLASS} = no class; "
                             f"the checkpoint has {self.model.config.num_labels} labels")

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        members: list[bytes | None] = [None] * len(batch)
        for idx, inputs in self.processed_groups([s.image for s in batch]):
            out = self.model(**inputs)
            mask_logits = out.masks_queries_logits  # B×Q×h×w at a fraction of the padded input
            pad_h, pad_w = inputs["pixel_values"].shape[-2:]
            for j, i in enumerate(idx):
                valid = inputs["pixel_mask"][j]
                # unpadded size of the image (size_divisor padding), in mask-logit pixels
                rows = int(valid.any(dim=1).sum()) * mask_logits.shape[-2] / pad_h
                cols = int(valid.any(dim=0).sum()) * mask_logits.shape[-1] / pad_w
                one = SimpleNamespace(
                    class_queries_logits=out.class_queries_logits[j:j + 1].float(),
                    masks_queries_logits=mask_logits[j:j + 1, :, :max(1, round(rows)), :max(1, round(cols))].float())
                members[i] = encode_png(self.class_map(one, batch[i].image.shape[:2]))
        return members

    def class_map(self, outputs, size: tuple[int, int]) -> np.ndarray:
        c = self.config
        res = self.processor.post_process_panoptic_segmentation(
            outputs, threshold=c.threshold, mask_threshold=c.mask_threshold,
            overlap_mask_area_threshold=c.overlap_mask_area_threshold, label_ids_to_fuse=set(),
            target_sizes=[size])[0]
        segment_ids = res["segmentation"].cpu().numpy().astype(np.int64)
        lut = np.full(max([seg["id"] for seg in res["segments_info"]], default=0) + 1, NO_CLASS, np.uint8)
        for seg in res["segments_info"]:
            lut[seg["id"]] = seg["label_id"]
        # segment id 0 (and -1 when nothing survived) = no segment
        return np.where(segment_ids > 0, lut[segment_ids.clip(0, len(lut) - 1)], NO_CLASS).astype(np.uint8)
