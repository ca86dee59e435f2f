"""4M-21 metadata (`metadata`): a flat JSON of the field names ml-4m knows (4M_FORMAT.md §7).

Each field declares the folders it needs; a field is written only when all of them are
committed for the shard (the label stage orders metadata after its inputs), so a dataset
without SAM simply has no `n_sam_instances`. Values are raw numbers; binning into
`v1=id v0=bin` happens when serialising for the text tokenizer.

Definitions (image statistics on the ingested 8-bit RGB image):
- original_width / original_height: size of the source image before resizing (source/ KEY.json).
- colorfulness: Hasler & Süsstrunk (2003): sqrt(σ_rg²+σ_yb²) + 0.3·sqrt(μ_rg²+μ_yb²) with
  rg = R−G and yb = (R+G)/2 − B; ≈0 for gray images, >100 for saturated ones (4M bins 0..150).
- brightness: mean of the ITU-R BT.601 luma, 0..255.
- contrast: standard deviation of that luma (RMS contrast), 0..~127.
- saturation: mean of HSV saturation scaled to 0..255.
- entropy: Shannon entropy in bits of the 256-bin luma histogram, 0..8.
Fields that follow from other modalities are defined next to their functions below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import cv2
import numpy as np

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, Resources
from prism4m.contract.members import decode_png, encode_json


class MetadataConfig(LabelerConfig):
    pass


class MetadataContext:
    """Lazily decoded inputs of one sample, shared by all field functions."""

    def __init__(self, sample: LabelInput):
        self.sample = sample
        self._json: dict[str, object] = {}

    @cached_property
    def luma(self) -> np.ndarray:
        return cv2.cvtColor(self.sample.image, cv2.COLOR_RGB2GRAY)

    def json(self, folder: str):
        if folder not in self._json:
            self._json[folder] = json.loads(self.sample.inputs[folder])
        return self._json[folder]

    def png(self, folder: str) -> np.ndarray:
        return decode_png(self.sample.inputs[folder])


@dataclass(frozen=True)
class MetadataField:
    name: str
    inputs: tuple[str, ...]
    compute: Callable[[MetadataContext], float | int]


def _colorfulness(ctx: MetadataContext) -> float:
    rgb = ctx.sample.image.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _saturation(ctx: MetadataContext) -> float:
    hsv = cv2.cvtColor(ctx.sample.image, cv2.COLOR_RGB2HSV)
    return float(hsv[..., 1].mean())


def _entropy(ctx: MetadataContext) -> float:
    hist = np.bincount(ctx.luma.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


IMAGE_FIELDS: list[MetadataField] = [
    MetadataField("original_width", ("source",), lambda c: int(c.json("source")["original_width"])),
    MetadataField("original_height", ("source",), lambda c: int(c.json("source")["original_height"])),
    MetadataField("colorfulness", (), _colorfulness),
    MetadataField("brightness", (), lambda c: float(c.luma.mean())),
    MetadataField("contrast", (), lambda c: float(c.luma.std())),
    MetadataField("saturation", (), _saturation),
    MetadataField("entropy", (), _entropy),
]

#: every field this labeler can compute; modality-derived fields are appended by
#: prism4m.labelers.metadata_fields (kept apart: they read other labelers' formats)
FIELDS: list[MetadataField] = list(IMAGE_FIELDS)


def _all_fields() -> list[MetadataField]:
    # Imported late: metadata_fields imports MetadataField from this module.
    from prism4m.labelers.metadata_fields import DERIVED_FIELDS

    return FIELDS + list(DERIVED_FIELDS)


def metadata_inputs() -> tuple[str, ...]:
    return tuple(sorted({f for field in _all_fields() for f in field.inputs}))


class MetadataLabeler(Labeler):
    name = "metadata"
    extension = "json"
    requires = ("source",)
    Config = MetadataConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def __init__(self, config=None):
        super().__init__(config)
        # Every folder some field reads; the planner runs metadata after those in the run.
        self.optional_inputs = tuple(f for f in metadata_inputs() if f not in self.requires)

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        fields = _all_fields()
        out = []
        for sample in batch:
            ctx = MetadataContext(sample)
            record = {f.name: f.compute(ctx) for f in fields if all(i in sample.inputs for i in f.inputs)}
            out.append(encode_json(record))
        return out
