"""4M-21 metadata (`metadata`): a flat JSON of the field names ml-4m knows (4M_FORMAT.md §7).

Each field declares the folders it needs; a field is written only when all of them are
committed for the shard (the label stage orders metadata after its inputs), so a dataset
without SAM simply has no `n_sam_instances`. Values are raw numbers; binning into
`v1=id v0=bin` happens when serialising for the text tokenizer.

The fields and their definitions are in metadata_fields.py.
"""

from __future__ import annotations

from prism4m.contract.members import encode_json
from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, Resources
from prism4m.labelers.metadata_fields import ALL_FIELDS, MetadataContext, MetadataField

__all__ = ["MetadataConfig", "MetadataContext", "MetadataField", "MetadataLabeler", "metadata_inputs"]


class MetadataConfig(LabelerConfig):
    pass


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
        self.optional_inputs = tuple(f for f in metadata_inputs() if f not in self.requires)

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        fields = ALL_FIELDS
        out = []
        for sample in batch:
            ctx = MetadataContext(sample)
            record = {f.name: f.compute(ctx) for f in fields if all(i in sample.inputs for i in f.inputs)}
            out.append(encode_json(record))
        return out
