"""Shared mechanism for labelers built on Hugging Face transformers models.

One idea: resolve `checkpoint`, load a model (+ processor) once per actor from a *local* path,
run batches under `torch.inference_mode`, and report provenance. Subclasses say which classes to
load and turn model outputs into encoded members; they never touch loading or devices.

API (for labeler authors)
-------------------------

Subclass `HFLabeler` and set the class attributes::

    class DepthLabeler(HFLabeler):
        name = "depth"; extension = "png"
        Config = DepthConfig                      # subclass of HFLabelerConfig
        model_class = "AutoModelForDepthEstimation"   # attribute name in `transformers`
        processor_class = "AutoImageProcessor"        # or "AutoProcessor", or None
        example_checkpoint = "depth-anything/Depth-Anything-V2-Small-hf"

        def predict(self, batch: list[LabelInput]) -> list[bytes]:
            inputs = self.processor(images=[s.image for s in batch], return_tensors="pt")
            out = self.model(**self.to_device(inputs))
            ...

- `predict` runs inside `torch.inference_mode()` after `setup()`; `label_batch` calls it.
- `self.model` (on `self.device`, eval mode, dtype from config), `self.processor` (or None),
  `self.checkpoint` (`weights.ResolvedCheckpoint`) are set by `setup()`.
- `self.processed_groups(images)` preprocesses images one by one and yields `(indices, inputs)`
  with images of equal processed shape stacked — for processors that keep the aspect ratio
  (DPT / Depth Anything: outputs cannot be stacked across a mixed batch) or pad a batch to its
  largest image (Mask2Former, DETR: padding changes the prediction next to the image).
- `self.to_device(inputs)` moves a processor's output (BatchFeature / dict of tensors) to the
  model's device, casting floating tensors to the model's dtype (fp16/bf16 on GPU).
- `load_model_kwargs()` / `load_processor_kwargs()` may be overridden to pass extra
  `from_pretrained` arguments (e.g. `use_fast`); `model_class_ref()` to return a class object
  instead of a transformers name (e.g. a subclass defined in prism4m, see normal.py).
- `model_provenance()` = `ResolvedCheckpoint.provenance("transformers", "torch")` plus
  `model_class` (the concrete class loaded) and `model_id` (the configured checkpoint).

Labelers with more than one model (pose = detector + VitPose) call `load_hf_model` directly for
each extra checkpoint; it applies the same rules (MissingWeightsError naming the config key
`labelers.<name>.<key>`, offline hub, random-weights marker) and returns an `HFModel` whose
`provenance()` can be merged into `model_provenance()`.

Loading rules: `checkpoint` is resolved by `weights.resolve_checkpoint` (local dir or hub id;
`HF_HUB_OFFLINE=1` honoured; no checkpoint → MissingWeightsError before any shard), then
`from_pretrained(<local path>, local_files_only=True)`, so nothing is downloaded after
resolution and a random-weights test model goes through exactly the path users run.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, MissingWeightsError
from prism4m.labelers.weights import DeepLabelerConfig, ResolvedCheckpoint, missing_weights, resolve_checkpoint

#: libraries whose versions go into every transformers labeler's provenance
HF_LIBRARIES = ("transformers", "torch")


class HFLabelerConfig(DeepLabelerConfig):
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="weights/activation dtype (float16/bfloat16 only make sense on GPU)")


def _transformers_attr(name: str):
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError:
        raise ImportError(f"transformers {transformers.__version__} has no {name!r}") from None


def checkpoint_dir(path: Path) -> Path:
    """The directory holding a checkpoint (a file checkpoint's parent)."""
    return path if path.is_dir() else path.parent


@dataclass
class HFModel:
    """A loaded model, its processor (or None) and where the weights came from."""

    model: Any
    processor: Any
    checkpoint: ResolvedCheckpoint

    def provenance(self) -> dict:
        prov = self.checkpoint.provenance(*HF_LIBRARIES)
        prov["model_class"] = type(self.model).__name__
        if self.processor is not None:
            prov["processor_class"] = type(self.processor).__name__
        return prov


def load_hf_model(
    labeler: str,
    checkpoint: str | None,
    example: str,
    model_class: str | type,
    processor_class: str | type | None = "AutoImageProcessor",
    device: str = "cpu",
    dtype: str = "float32",
    config_key: str = "checkpoint",
    model_kwargs: dict | None = None,
    processor_kwargs: dict | None = None,
) -> HFModel:
    """Resolve `checkpoint`, load model + processor from the local path, move to device, eval()."""
    import torch

    try:
        resolved = resolve_checkpoint(labeler, checkpoint, example)
    except MissingWeightsError as exc:
        if config_key == "checkpoint":
            raise
        # same message, but naming the extra key (e.g. labelers.human_poses.detector_checkpoint)
        raise MissingWeightsError(str(exc).replace(f"{labeler}.checkpoint", f"{labeler}.{config_key}")) from None
    path = checkpoint_dir(resolved.path)
    mcls = _transformers_attr(model_class) if isinstance(model_class, str) else model_class
    if not (path / "config.json").exists():  # e.g. an empty or wrong directory: no weights to load
        raise missing_weights(labeler, example, f"{str(path)!r} has no config.json (not a save_pretrained directory)")
    try:
        model = mcls.from_pretrained(str(path), local_files_only=True, dtype=getattr(torch, dtype),
                                     **(model_kwargs or {}))
    except OSError as exc:  # a config without its weight files: still "no weights"
        raise missing_weights(labeler, example, f"could not load {checkpoint!r} with "
                              f"{getattr(mcls, '__name__', mcls)} ({str(exc)[:200]})") from None
    model.to(device).eval()
    processor = None
    if processor_class is not None:
        pcls = _transformers_attr(processor_class) if isinstance(processor_class, str) else processor_class
        processor = pcls.from_pretrained(str(path), local_files_only=True, **(processor_kwargs or {}))
    return HFModel(model, processor, resolved)


class HFLabeler(Labeler):
    """Base for single-model transformers labelers; see the module docstring."""

    Config: ClassVar[type[HFLabelerConfig]] = HFLabelerConfig
    #: name of a transformers class (Auto* or concrete) with from_pretrained
    model_class: ClassVar[str]
    #: name of the processor class, or None when the labeler preprocesses itself
    processor_class: ClassVar[str | None] = "AutoImageProcessor"
    #: a hub id a real user would set; quoted in the missing-weights message
    example_checkpoint: ClassVar[str]

    model: Any = None
    processor: Any = None
    checkpoint: ResolvedCheckpoint | None = None

    def load_model_kwargs(self) -> dict:
        return {}

    def load_processor_kwargs(self) -> dict:
        return {}

    def model_class_ref(self) -> str | type:
        """The class to load: `model_class` (a transformers name); override to return a class."""
        return self.model_class

    def setup(self) -> None:
        loaded = load_hf_model(
            self.name, self.config.checkpoint, self.example_checkpoint, self.model_class_ref(),
            self.processor_class, device=self.device, dtype=self.config.dtype,
            model_kwargs=self.load_model_kwargs(), processor_kwargs=self.load_processor_kwargs())
        self._loaded = loaded
        self.model, self.processor, self.checkpoint = loaded.model, loaded.processor, loaded.checkpoint

    def model_provenance(self) -> dict:
        self.ensure_setup()
        return self._loaded.provenance()

    def to_device(self, inputs) -> dict:
        """Processor output → kwargs on the model's device; floats in the model's dtype."""
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in dict(inputs).items():
            if hasattr(v, "to"):
                v = v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
            out[k] = v
        return out

    def processed_groups(self, images, processor=None, **processor_kwargs):
        """Yield (indices, model inputs on device) for groups of images whose processed tensors
        have the same shape. Each image is processed alone, so no image is padded to another's
        size (padding changes what convolutions and attention see next to the image).
        `processor`: another model's processor (default `self.processor`)."""
        import numpy as np
        import torch

        processor = self.processor if processor is None else processor
        groups: dict[tuple, list] = {}
        for i, img in enumerate(images):
            one = processor(images=np.ascontiguousarray(img), return_tensors="pt", **processor_kwargs)
            groups.setdefault(tuple(one["pixel_values"].shape), []).append((i, one))
        for members in groups.values():
            idx = [i for i, _ in members]
            stacked = {k: torch.cat([one[k] for _, one in members]) for k in members[0][1].keys()}
            yield idx, self.to_device(stacked)

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        import torch

        self.ensure_setup()
        with torch.inference_mode():
            return self.predict(batch)

    @abstractmethod
    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        """One encoded member per input (inside inference_mode, model loaded)."""
