"""The one table of modalities: what each folder of a root holds and what its tokens are.

Labelers declare against it (a labeler's folder and member extension), the tokenize stage
reads how a modality is tokenized and where its tokens go, the trainer reads ml-4m's
defaults for each token folder, the report orders and renders folders by it, the export
knows the sequence folders from it. Facts about ml-4m (names, vocabularies, token counts)
come from ml-4m's MODALITY_INFO (../shared/docs/4M_FORMAT.md §3).

Two names per modality: ``name`` is the folder in a prism4m root (the label), and
``token_name`` is ml-4m's name of its tokens (``tok_rgb``; the folder gets ``@<res>``).
Feature labels also give a *global* token modality (``clip_global``: row 0 of ``clip/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TokenKind = Literal["image", "classes", "feature", "global", "instances", "pose"]
TrainType = Literal["img", "seq", "global"]

# ml-4m's text tokenizer: its vocabulary serves every sequence modality (4M_FORMAT.md §3).
TEXT_VOCAB_SIZE = 30000
#: a kept token version's folder is ``<folder>~<card hash[:8]>`` (``tok_rgb@224~1a2b3c4d``)
VERSION_SEP = "~"


@dataclass(frozen=True)
class Modality:
    name: str                       # folder in the root (for a global token modality: the tokenizer's name)
    ext: str                        # member extension in that folder
    folder: str = ""                # where its label lives (default: name; clip_global reads clip/)
    token_kind: TokenKind | None = None  # how the tokenize stage reads it; None: not tokenized
    token_name: str | None = None   # ml-4m's name of the tokens (tok_rgb); the folder adds @<res>
    train_type: TrainType | None = None  # what the trainer sees: a token grid, a global vector, a sequence
    vocab: int = 0                  # ml-4m's vocabulary (text vocabulary for sequences)
    tokens: int = 0                 # tokens per crop (global/MLP), or ml-4m's max sequence length
    patch_size: int = 16            # rgb pixels per token side (image-like tokens)
    sequence: bool = False          # a text-like sequence in the trainer and the Parquet export

    @property
    def label_folder(self) -> str:
        return self.folder or self.name

    def token_folder(self, input_size: int) -> str:
        """Where its tokens go: ``tok_rgb@224``; a global one has no resolution; pose tokens
        ``human_poses@tok`` (the label folder keeps its name, as for ``sam_instance@224``)."""
        if self.token_kind == "global":
            return self.token_name
        return f"{self.token_name}@tok" if self.token_kind == "pose" else f"{self.token_name}@{input_size}"


_IMG, _SEQ = "img", "seq"

MODALITIES: dict[str, Modality] = {m.name: m for m in [
    # ingest's folders
    Modality("rgb", "jpg", token_kind="image", token_name="tok_rgb", train_type=_IMG, vocab=16384),
    Modality("source", "json"),
    Modality("crop_settings", "npy"),
    Modality("caption", "txt", train_type=_SEQ, vocab=TEXT_VOCAB_SIZE, tokens=256, sequence=True),
    # dense labels
    Modality("depth", "png", token_kind="image", token_name="tok_depth", train_type=_IMG, vocab=8192),
    Modality("normal", "png", token_kind="image", token_name="tok_normal", train_type=_IMG, vocab=8192),
    Modality("canny_edge", "png", token_kind="image", token_name="tok_canny_edge", train_type=_IMG, vocab=8192),
    Modality("sam_edge", "png", token_kind="image", token_name="tok_sam_edge", train_type=_IMG, vocab=8192),
    Modality("semseg_coco", "png", token_kind="classes", token_name="tok_semseg", train_type=_IMG, vocab=4096),
    # feature maps, and the global vectors of their row 0
    Modality("clip", "npy", token_kind="feature", token_name="tok_clip", train_type=_IMG, vocab=8192),
    Modality("dinov2", "npy", token_kind="feature", token_name="tok_dinov2", train_type=_IMG, vocab=8192,
             patch_size=14),
    Modality("imagebind", "npy", token_kind="feature", token_name="tok_imagebind", train_type=_IMG, vocab=8192,
             patch_size=14),
    Modality("clip_global", "npy", folder="clip", token_kind="global", token_name="tok_clip_global",
             train_type="global", vocab=8192, tokens=16),
    Modality("dinov2_global", "npy", folder="dinov2", token_kind="global", token_name="tok_dinov2_global",
             train_type="global", vocab=8192, tokens=16),
    Modality("imagebind_global", "npy", folder="imagebind", token_kind="global",
             token_name="tok_imagebind_global", train_type="global", vocab=8192, tokens=16),
    # instances and sequences
    Modality("sam_instance", "json", token_kind="instances", token_name="sam_instance", train_type=_SEQ,
             vocab=TEXT_VOCAB_SIZE, tokens=290, sequence=True),
    Modality("human_poses", "json", token_kind="pose", token_name="human_poses", train_type=_SEQ,
             vocab=TEXT_VOCAB_SIZE, tokens=275, sequence=True),
    Modality("det", "json", train_type=_SEQ, vocab=TEXT_VOCAB_SIZE, tokens=256, sequence=True),
    Modality("metadata", "json", train_type=_SEQ, vocab=TEXT_VOCAB_SIZE, tokens=40, sequence=True),
    Modality("color_palette", "json", train_type=_SEQ, vocab=TEXT_VOCAB_SIZE, tokens=23, sequence=True),
    Modality("t5_caption", "npz"),
]}

#: The 19 in_domain keys of ml-4m's 4M-21 data config (4M_FORMAT.md §3) → the prism4m label
#: folder each one's data comes from (its tokens are made from that folder; `rgb@224` is the
#: pixels themselves). `prism4m status` counts them.
FOURM21_IN_DOMAIN: dict[str, str] = {
    "rgb@224": "rgb", "tok_rgb@224": "rgb", "tok_depth@224": "depth", "tok_normal@224": "normal",
    "tok_semseg@224": "semseg_coco", "tok_clip@224": "clip", "caption": "caption", "det": "det",
    "t5_caption": "t5_caption", "metadata": "metadata", "human_poses": "human_poses",
    "color_palette": "color_palette", "sam_instance": "sam_instance", "tok_canny_edge@224": "canny_edge",
    "tok_sam_edge@224": "sam_edge", "tok_dinov2@224": "dinov2", "tok_imagebind@224": "imagebind",
    "tok_dinov2_global": "dinov2", "tok_imagebind_global": "imagebind",
}

#: folders whose members are text-like sequences (trainer and Parquet export)
SEQUENCE_FOLDERS: tuple[str, ...] = tuple(m.name for m in MODALITIES.values() if m.sequence)


def modality(name: str) -> Modality:
    """The table's entry for a folder or token modality name (``tok_rgb@224`` → rgb)."""
    base = name.split(VERSION_SEP)[0].split("@")[0]
    if base in MODALITIES:
        return MODALITIES[base]
    for m in MODALITIES.values():
        if m.token_name == base:
            return m
    raise KeyError(f"unknown modality {name!r}; known: {', '.join(sorted(MODALITIES))}")


def by_token_name(token_name: str) -> Modality | None:
    """The modality whose tokens ml-4m calls ``token_name`` (``tok_rgb``), if any."""
    return next((m for m in MODALITIES.values() if m.token_name == token_name), None)
