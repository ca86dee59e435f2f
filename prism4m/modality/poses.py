"""Human poses as 4M-21's ``pose`` tokens: one MLP-tokenized vector per person.

ml-4m tokenizes each person's SMPL body pose (207 values) with a bottleneck MLP into 8 ids
of a 1024-code book. Our ``human_poses`` labels (DATASET.md) are COCO keypoints instead, so
the vector is the person's 17 keypoints normalised to its box: per keypoint
``(x - x0) / (x1 - x0)``, ``(y - y0) / (y1 - y0)`` (0..1 inside the box) and its score,
51 values. The box itself is not in the vector: it is written as ``human v0=.. v3=..``
next to the tokens, so the same pose gets the same tokens wherever and however large the
person is. Poses do not depend on the crop (ml-4m does not flip them either): a person has
one set of ids for every crop row.

The pose tokenizer (tokenizers.pose.PoseTokenizer: the MLP tokenizer, standardised inputs,
8 tokens by default) writes ``human_poses@tok/KEY.json`` (``member_bytes``): the label
record with ``pose_tokenized`` added to each person plus the rgb ``height``/``width``,
which is all serializers.serialize_human_poses needs to write ml-4m's sequence (its
``pose`` group) at load time.
"""

from __future__ import annotations

import json

import numpy as np

from prism4m.contract.members import encode_json
from prism4m.labelers.pose_format import COCO_KEYPOINTS

#: inputs of the pose MLP: 17 × (x, y, score)
POSE_CHANNELS = 3 * COCO_KEYPOINTS


def decode_label(data: bytes) -> dict:
    """human_poses KEY.json → the record; persons without a box or 17 keypoints raise ValueError."""
    rec = json.loads(data)
    for i, p in enumerate(rec.get("persons", []) if rec else []):
        if len(p.get("bbox_xyxy", ())) != 4 or np.shape(p.get("keypoints", ())) != (COCO_KEYPOINTS, 3):
            raise ValueError(f"person {i}: needs bbox_xyxy [x0,y0,x1,y1] and {COCO_KEYPOINTS} keypoints [x,y,s]")
    return rec


def pose_vectors(record: dict) -> np.ndarray:
    """(n_persons, 51) float32: keypoints relative to each person's box, then their scores."""
    persons = record.get("persons", []) if record else []
    out = np.zeros((len(persons), COCO_KEYPOINTS, 3), dtype=np.float32)
    for i, p in enumerate(persons):
        x0, y0, x1, y1 = (float(v) for v in p["bbox_xyxy"])
        kp = np.asarray(p["keypoints"], dtype=np.float64)
        out[i, :, 0] = (kp[:, 0] - x0) / max(x1 - x0, 1e-6)
        out[i, :, 1] = (kp[:, 1] - y0) / max(y1 - y0, 1e-6)
        out[i, :, 2] = kp[:, 2]
    return out.reshape(len(persons), POSE_CHANNELS)


def member_bytes(record: dict, image_hw: tuple[int, int], tokens: np.ndarray) -> bytes:
    """The label record with each person's ``pose_tokenized`` and the rgb size (module docstring)."""
    persons = record.get("persons", []) if record else []
    if len(tokens) != len(persons):
        raise ValueError(f"{len(tokens)} token rows for {len(persons)} persons")
    doc = {"height": int(image_hw[0]), "width": int(image_hw[1]),
           "persons": [{**p, "pose_tokenized": [int(t) for t in ids]} for p, ids in zip(persons, tokens)]}
    return encode_json(doc)
