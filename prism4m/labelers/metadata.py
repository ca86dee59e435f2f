"""4M-21 metadata (`metadata`): a flat JSON of the field names ml-4m knows (4M_FORMAT.md §7).

Each field declares the folders it needs; a field is written only when all of them are
committed for the shard (the label stage orders metadata after its inputs), so a dataset
without SAM simply has no `n_sam_instances`. Values are raw numbers; binning into
`v1=id v0=bin` happens when serialising for the text tokenizer.

The fields and their definitions are in metadata_fields.py; `watermark_score` and
`aesthetic_score` come from learned predictors whose weights the user gives
(`watermark_checkpoint`, `aesthetic_checkpoint`; quality_scores.py) and are absent otherwise.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from prism4m.contract.members import encode_json
from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, MissingWeightsError, Resources
from prism4m.labelers.metadata_fields import ALL_FIELDS, MetadataContext, MetadataField
from prism4m.labelers.weights import is_random_weights, weights_digest

__all__ = ["MetadataConfig", "MetadataContext", "MetadataField", "MetadataLabeler", "metadata_inputs"]


#: learned fields: config key → (field, where the weights come from)
LEARNED = {
    "watermark_checkpoint": ("watermark_score", "LAION's watermark_model_v1.pt (github LAION-AI/LAION-5B-WatermarkDetection)"),
    "aesthetic_checkpoint": ("aesthetic_score", "LAION's sac+logos+ava1-l14-linearMSE.pth (github "
                             "christophschuhmann/improved-aesthetic-predictor)"),
}
#: the folder whose global embedding the aesthetic head reads
AESTHETIC_INPUT = "clip"


class MetadataConfig(LabelerConfig):
    watermark_checkpoint: str | None = Field(
        None, description="LAION watermark detector weights (file or dir): adds watermark_score")
    aesthetic_checkpoint: str | None = Field(
        None, description="LAION aesthetic predictor weights over the clip/ embedding: adds aesthetic_score")


def metadata_inputs() -> tuple[str, ...]:
    return tuple(sorted({f for field in ALL_FIELDS for f in field.inputs}))


class MetadataLabeler(Labeler):
    name = "metadata"
    requires = ("source",)
    Config = MetadataConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def __init__(self, config=None):
        super().__init__(config)
        # Every folder some field reads; the planner runs metadata after those in the run.
        wanted = set(metadata_inputs()) | ({AESTHETIC_INPUT} if self.config.aesthetic_checkpoint else set())
        self.optional_inputs = tuple(sorted(f for f in wanted if f not in self.requires))
        self._watermark = self._aesthetic = None
        self._digests: dict[str, str] = {}
        self.uses_torch = bool(self.config.watermark_checkpoint)  # the only torch model here

    def _weights(self, key: str) -> Path:
        given = getattr(self.config, key)
        path = Path(given).expanduser()
        if not path.exists():
            raise MissingWeightsError(f"labeler 'metadata': {key} {given!r} does not exist; give the path of "
                                      f"{LEARNED[key][1]} (weights are never downloaded at run time)")
        return path

    def output_config(self) -> dict:
        """Unset learned fields leave the config as before they existed (roots stay current);
        set ones name their weights by content."""
        out = super().output_config()
        for key in LEARNED:
            if out.get(key) is None:
                out.pop(key, None)
            else:
                if key not in self._digests:  # hashing 50 MB once per labeler, not per shard
                    self._digests[key] = weights_digest(self._weights(key))
                out[key] = {"path": out[key], "sha256": self._digests[key]}
        return out

    def model_provenance(self) -> dict:
        keys = [k for k in LEARNED if getattr(self.config, k)]
        if not keys:
            return super().model_provenance()
        return {"random_weights": any(is_random_weights(self._weights(k)) for k in keys),
                "predictors": {LEARNED[k][0]: LEARNED[k][1] for k in keys}}

    def setup(self) -> None:
        from prism4m.labelers.quality_scores import AestheticHead, WatermarkDetector

        if self.config.watermark_checkpoint:
            self._watermark = WatermarkDetector(self._weights("watermark_checkpoint"), device=self.device)
        if self.config.aesthetic_checkpoint:
            self._aesthetic = AestheticHead(self._weights("aesthetic_checkpoint"))

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        records = []
        for sample in batch:
            ctx = MetadataContext(sample)
            records.append({f.name: f.compute(ctx) for f in ALL_FIELDS if all(i in sample.inputs for i in f.inputs)})
        if self._watermark is not None:
            for rec, score in zip(records, self._watermark([s.image for s in batch])):
                rec["watermark_score"] = float(score)
        if self._aesthetic is not None:
            have = [i for i, s in enumerate(batch) if AESTHETIC_INPUT in s.inputs]
            if have:
                embs = [self._aesthetic.embedding(batch[i].inputs[AESTHETIC_INPUT], AESTHETIC_INPUT) for i in have]
                for i, score in zip(have, self._aesthetic(embs)):
                    records[i]["aesthetic_score"] = float(score)
        return [encode_json(r) for r in records]
