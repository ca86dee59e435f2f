"""The SAM instance mask tokenizer: the VQ tokenizer on each kept instance's 64×64 mask.

Its batch is one row per instance kept in any crop (modality.instances.crop_instances), not
one per crop, and its member is the sample's ``KEY.json`` listing each crop's instances
(modality.instances.member_bytes).
"""

from __future__ import annotations

import numpy as np

from prism4m.modality.instances import MIN_AREA, CropInstances, InstanceLabel, crop_instances, member_bytes
from prism4m.modality.specs import normalise
from prism4m.tokenizers.vq import VQTokenizer


class MaskTokenizer(VQTokenizer):
    """The VQ tokenizer on instance masks; its members list each crop's instances (KEY.json)."""

    type = "vq_mask"
    member_ext = "json"

    @property
    def mask_size(self) -> int:
        arch = self.card.architecture
        return int(arch["grid"]) * int(arch["patch"])

    @property
    def min_area(self) -> int:
        return int(self.card.normalisation.get("min_area_px", MIN_AREA))

    def prepare_sample(self, value: InstanceLabel, rows: np.ndarray, image_hw: tuple[int, int],
                       region=None) -> tuple[np.ndarray, CropInstances]:
        inst = crop_instances(value, rows, self.card.input_size, self.mask_size, self.min_area)
        return normalise(self.spec, inst.masks), inst

    def prepare(self, value, rows, image_hw, region=None) -> np.ndarray:
        """(n_instances over all crops, 1, m, m) float 0/1; the crop of each is in prepare_sample."""
        return self.prepare_sample(value, rows, image_hw, region)[0]

    def member_bytes(self, tokens: np.ndarray, layout: CropInstances) -> bytes:
        return member_bytes(layout, tokens, self.card.input_size, int(np.prod(self.card.token_grid)))
