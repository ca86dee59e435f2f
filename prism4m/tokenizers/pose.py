"""The human pose tokenizer: the MLP tokenizer on each person's box-relative keypoints.

Its batch is one row per person (modality.poses.pose_vectors, the same for every crop row)
and its member is the label record with each person's ``pose_tokenized``
(modality.poses.member_bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prism4m.modality.poses import member_bytes
from prism4m.tokenizers.mlp import MLPTokenizer


class PoseTokenizer(MLPTokenizer):
    """The MLP tokenizer on box-normalised keypoints; members are enriched pose records."""

    type = "mlp_pose"
    member_ext = "json"

    def prepare_sample(self, value: dict, rows: np.ndarray, image_hw: tuple[int, int],
                       region=None) -> tuple[np.ndarray, Any]:
        return self.prepare(value, rows, image_hw, region), (value, image_hw)

    def member_bytes(self, tokens: np.ndarray, layout: tuple[dict, tuple[int, int]]) -> bytes:
        record, image_hw = layout
        return member_bytes(record, image_hw, tokens)
