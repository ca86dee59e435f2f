"""Find labeler classes by output-folder name: built-ins plus the `prism4m.labelers` entry points.

Built-ins are named by import path so that listing them imports nothing heavy (transformers,
segment-anything): a class is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from prism4m.errors import UserError
from prism4m.labelers.base import Labeler

ENTRY_POINT_GROUP = "prism4m.labelers"

BUILTIN_LABELERS: dict[str, str] = {
    "canny_edge": "prism4m.labelers.canny_edge:CannyEdgeLabeler",
    "color_palette": "prism4m.labelers.color_palette:ColorPaletteLabeler",
    "metadata": "prism4m.labelers.metadata:MetadataLabeler",
    "sam_instance": "prism4m.labelers.sam:SamInstanceLabeler",
    "sam_edge": "prism4m.labelers.sam:SamEdgeLabeler",
    "depth": "prism4m.labelers.depth:DepthLabeler",
    "normal": "prism4m.labelers.normal:NormalLabeler",
    "human_poses": "prism4m.labelers.human_poses:HumanPosesLabeler",
    "clip": "prism4m.labelers.clip:ClipLabeler",
    "dinov2": "prism4m.labelers.dinov2:Dinov2Labeler",
    "imagebind": "prism4m.labelers.imagebind:ImagebindLabeler",
    "caption": "prism4m.labelers.caption:CaptionLabeler",
    "t5_caption": "prism4m.labelers.t5_caption:T5CaptionLabeler",
    "semseg_coco": "prism4m.labelers.semseg:SemsegCocoLabeler",
    "det": "prism4m.labelers.detection:DetectionLabeler",
}


class UnknownLabelerError(UserError, KeyError):
    """A labeler name no installed package provides (a KeyError too, for lookups that expect one)."""

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0])


def _entry_point_targets() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_labelers() -> dict[str, str]:
    """name → "module:Class"; entry points override built-ins of the same name."""
    out = dict(BUILTIN_LABELERS)
    out.update(_entry_point_targets())
    return out


def _load(target: str) -> type[Labeler]:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Labeler)):
        raise TypeError(f"{target} is not a prism4m Labeler subclass")
    return obj


def get_labeler_class(name: str) -> type[Labeler]:
    table = available_labelers()
    if name not in table:
        raise UnknownLabelerError(f"unknown labeler {name!r}; available: {', '.join(sorted(table))} "
                       f"(third-party labelers register under the entry-point group {ENTRY_POINT_GROUP!r})")
    cls = _load(table[name])
    if cls.name != name:
        raise TypeError(f"{table[name]} declares name {cls.name!r}, registered as {name!r}")
    return cls


def make_labeler(name: str, config: dict | None = None) -> Labeler:
    """The labeler ``name`` with ``config`` validated (UserError naming a wrong key or value)."""
    return get_labeler_class(name)(config or {})


def config_table(name: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of each setting of labeler ``name``, from its pydantic
    Config, the labeler's own settings before the ones every labeler has; defaults are shown
    as `-c` takes them (YAML/JSON scalars)."""
    import json

    from prism4m.labelers.base import LabelerConfig

    fields = get_labeler_class(name).Config.model_fields
    common = LabelerConfig.model_fields
    rows = []
    for key, f in sorted(fields.items(), key=lambda kv: kv[0] in common):
        ann = f.annotation
        type_name = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = "required" if f.is_required() else f.get_default(call_default_factory=True)
        shown = default if isinstance(default, str) else json.dumps(default, default=str)
        rows.append((key, type_name, shown, f.description or ""))
    return rows
