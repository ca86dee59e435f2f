"""What a labeler is: a named output folder, declared resources, a model loaded once, a batch call.

A labeler turns a batch of decoded images (plus, for derived labelers, the committed members
of other folders) into one encoded member per sample. The label stage (prism4m.pipeline.label)
owns everything else: reading shards, decoding once per actor, isolating a failing sample
into an invalid record, committing, provenance. Subclasses only describe and compute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism4m import __version__
from prism4m.contract.modalities import MODALITIES
from prism4m.errors import UserError, describe_validation_error


class LabelerConfig(BaseModel):
    """Fields every labeler accepts; subclasses add their own (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    num_cpus: float | None = Field(None, description="CPUs per actor (default: the labeler's)")
    num_gpus: float | None = Field(None, description="GPU fraction per actor (default: the labeler's)")
    batch_size: int | None = Field(None, ge=1, description="samples per forward pass")
    device: str | None = Field(None, description="'cuda', 'cpu' or None for automatic")
    group: str = Field("default", description="labelers of one group share an actor and each decoded batch")
    pipeline_depth: int | None = Field(
        None, ge=1, description="shards in flight per actor: 1 works in series; 3 reads/decodes the next shard and "
                                "writes the previous one while the model runs (default: 3 with a GPU, else 1)")


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 16
    pipeline_depth: int = 0  # 0: automatic (3 when the actor has a GPU to keep busy, else 1)

    @property
    def depth(self) -> int:
        return self.pipeline_depth or (3 if self.num_gpus > 0 else 1)


@dataclass
class LabelInput:
    """One sample as a labeler sees it: the decoded rgb image and the other folders it asked for."""

    key: str
    image: np.ndarray  # H×W×3 uint8 RGB, the ingested (resized) image
    inputs: dict[str, bytes] = field(default_factory=dict)  # folder → member bytes (valid ones only)


class MissingWeightsError(RuntimeError):
    """Raised by setup() when no weights are reachable; the message says how to provide them."""


class Labeler(ABC):
    #: output folder, also the registry name
    name: ClassVar[str]
    #: member extension in the output tar: the modality table's (contract.modalities) for a
    #: folder it knows; a third-party labeler of another folder sets its own
    extension: ClassVar[str]
    #: folders that must be committed before this labeler runs (e.g. sam_edge ← sam_instance)
    requires: ClassVar[tuple[str, ...]] = ()
    #: folders read when committed, ignored otherwise (metadata's counts)
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    #: resources per actor when the config does not override them
    default_resources: ClassVar[Resources] = Resources()
    #: pydantic model of this labeler's config
    Config: ClassVar[type[LabelerConfig]] = LabelerConfig
    #: bump when the output of the same config changes (part of the producer hash)
    version: ClassVar[str] = "1"
    #: False for a labeler that never runs a torch model: its device is the CPU, and asking
    #: torch (which importing costs about a second per actor) is skipped
    uses_torch: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        known = MODALITIES.get(getattr(cls, "name", ""))
        if known is not None:
            if "extension" in cls.__dict__ and cls.extension != known.ext:
                raise TypeError(f"labeler {cls.name}: extension {cls.extension!r} is not the modality table's "
                                f"{known.ext!r} (prism4m.contract.modalities)")
            cls.extension = known.ext

    def __init__(self, config: LabelerConfig | dict | None = None):
        if config is None:
            config = {}
        self.config = config if isinstance(config, self.Config) else self.parse_config(config)
        self._setup_done = False

    @classmethod
    def parse_config(cls, config: dict) -> LabelerConfig:
        """Validate a config dict; a typo or bad value is a UserError naming `labeler.key`."""
        try:
            return cls.Config.model_validate(config)
        except ValidationError as exc:
            raise UserError(describe_validation_error(exc, cls.name)) from None

    # ------------------------------------------------------------------ describe
    @property
    def resources(self) -> Resources:
        d = self.default_resources
        c = self.config
        return Resources(
            num_cpus=d.num_cpus if c.num_cpus is None else c.num_cpus,
            num_gpus=d.num_gpus if c.num_gpus is None else c.num_gpus,
            batch_size=d.batch_size if c.batch_size is None else c.batch_size,
            pipeline_depth=d.pipeline_depth if c.pipeline_depth is None else c.pipeline_depth,
        )

    @property
    def device(self) -> str:
        if self.config.device:
            return self.config.device
        if not self.uses_torch:
            return "cpu"
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"

    def output_config(self) -> dict:
        """Config fields that change the output (resources and device do not)."""
        return self.config.model_dump(mode="json", exclude={"num_cpus", "num_gpus", "batch_size", "device", "group",
                                                            "pipeline_depth"})

    def producer(self) -> dict:
        """What the ledger compares on resume: a change here makes committed shards stale."""
        return {
            "kind": "labeler",
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": self.version,
            "config": self.output_config(),
            "code_version": __version__,
        }

    def model_provenance(self) -> dict:
        """Model id, weight hash, library versions, random_weights; filled by deep labelers."""
        return {"random_weights": False}

    # ------------------------------------------------------------------ compute
    def setup(self) -> None:
        """Load the model once per actor. Raise MissingWeightsError with a how-to when absent."""

    def ensure_setup(self) -> None:
        if not self._setup_done:
            self.setup()
            self._setup_done = True

    @abstractmethod
    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        """One encoded member per input, in order. Raise to have the stage isolate failures."""


def library_versions(*names: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out
