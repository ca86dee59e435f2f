"""Pseudo-labelers: the base class, the registry and one module per labeler family."""

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, MissingWeightsError, Resources
from prism4m.labelers.registry import available_labelers, get_labeler_class, make_labeler

__all__ = [
    "LabelInput", "Labeler", "LabelerConfig", "MissingWeightsError", "Resources",
    "available_labelers", "get_labeler_class", "make_labeler",
]
