"""A published ml-4m tokenizer as the tokenize stage sees a tokenizer: card, spec, prepare, encode.

``OfficialStageTokenizer`` wraps ``load.OfficialTokenizer`` with the interface of
``prism4m.tokenizers.base.NeuralTokenizer`` (``card``, ``spec``, ``prepare_sample``,
``encode``, ``member_bytes``, ``card_hash``), so ``prism4m tokenize ROOT -t DIR`` treats a
card-less official checkpoint like one of ours. Its card is made, never stored: type
``ml4m``, the official id, the config it was built from, ml-4m's preprocessing and the
safetensors' sha256 — the fields whose change changes the ids, hence the token-version
hash.

Crops. Pixel modalities are cut from the label with each crop_settings row exactly as
ml-4m's ``save_vq_tokens.py`` cuts them (``preprocess.py``). Feature maps are where prism4m
differs: ml-4m runs CLIP/DINOv2 on every crop, prism4m's feature labelers run once on the
centred square (crop_settings row 0). Row 0 is fed the stored map unchanged (ml-4m's input,
given the same features); other rows get the stored map resampled to the row
(``modality.rasters.crop_feature_map``), an approximation of recomputing the features.
Global embeddings are the same for every row.

SAM instances (``sam-instance_1k_64``). The batch is one row per instance kept in any crop,
as for our own mask tokenizers (``tokenizers.mask.MaskTokenizer``): each instance is cut
per crop row by ``modality.instances.crop_instances`` (box in crop pixels, the box's
contents resized to the tokenizer's 64×64, kept where ≥ 0.5, instances under ``MIN_AREA``
crop pixels dropped) and fed as ml-4m feeds masks (0.0 / 1.0 float32, one channel). ml-4m
never released how its SAM-instance tokens were extracted, so this cut is prism4m's,
consistent with ml-4m's ``decode_sam_instances`` (16 ids → a 64×64 mask resized into the
box) and its training transform, not a copy of an extraction (DATASET.md). The member is
the ``KEY.json`` our mask tokenizers write (``modality.instances.member_bytes``) in the same
folder (``sam_instance@224``); the card has no ``n_tokens`` (the ids end up in a text
sequence) and a ``[4, 4]`` grid per instance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from prism4m.contract.members import encode_npy
from prism4m.errors import UserError
from prism4m.tokenizers.card import TokenizerCard
from prism4m.tokenizers.fourm.config import parse_config
from prism4m.tokenizers.fourm.families import FAMILIES, Family, family_by_domain, family_by_name, family_from_name
from prism4m.tokenizers.fourm.load import (
    WEIGHTS_FILE,
    OfficialTokenizer,
    is_official_dir,
    load_official,
    locate_official_files,
    looks_like_hub_id,
    weights_sha256,
)

TYPE = "ml4m"
INPUT_SIZE = 224

#: family → the tokenize spec (card ``modality``) of each label folder it can read
_SPEC_NAMES = {"rgb": "rgb", "depth": "depth", "normal": "normal", "semseg": "semseg_coco", "clip": "clip",
               "dinov2": "dinov2", "imagebind": "imagebind", "dinov2_global": "dinov2_global",
               "imagebind_global": "imagebind_global", "sam_instance": "sam_instance"}

PREPROCESSING = {
    "rgb": "ml-4m RGBTransform(imagenet_default_mean_and_std=False): crop, PIL resize (BICUBIC), hflip, /255, "
           "(x-0.5)/0.5",
    "depth": "ml-4m DepthTransform(standardize_depth=True): crop, PIL resize of the 16-bit image, hflip, /65535, "
             "truncated standardisation (10%/90%)",
    "normal": "ml-4m NormalTransform(standardize_surface_normals=False): crop, PIL resize (BICUBIC), hflip with "
              "R=255-R, /255, (x-0.5)/0.5",
    "edge": "ml-4m RGBTransform(imagenet_default_mean_and_std=False) on the edge image",
    "semseg": "ml-4m SemsegTransform(shift_idx_by_one=True): ids+1 in uint8, crop, PIL resize NEAREST, hflip",
    "feature_map": "save_vq_tokens.py: patch tokens (h*w, C) as a (C, h, w) map; row 0 the stored map, other rows "
                   "the map resampled to the row (prism4m)",
    "feature_global": "save_vq_tokens.py: the CLS embedding (C,) as (C, 1, 1), for every row",
    "sam_mask": "ml-4m SAMInstanceTransform input: each instance's mask as (1, S, S) float32 0.0/1.0; the cut "
                "per crop row (box, resize to S, threshold, min area) is prism4m's crop_instances (ml-4m did not "
                "release its SAM-instance token extraction)",
}


_RESAMPLE_OPTIONS = ("nearest", "bicubic", "pil_default")


@dataclass(frozen=True)
class OfficialRequest:
    """What ``-t [NAME[:OPTION]=]LOCATION`` asks for: NAME a family (``normal``), an ml-4m
    domain (``CLIP-B16``) or an edge folder (``canny_edge``/``sam_edge``); OPTION, for depth,
    the resize filter (``nearest`` reproduces Pillow ≤ 10.4, see preprocess.py)."""

    location: str
    family: str | None = None
    label_folder: str | None = None
    depth_resample: str = "pil_default"

    def load(self, device: str = "cpu") -> "OfficialStageTokenizer":
        return OfficialStageTokenizer.load(self.location, family=self.family, label_folder=self.label_folder,
                                           device=device, depth_resample=self.depth_resample)

    def card(self, input_size: int = INPUT_SIZE) -> TokenizerCard:
        """The card, from config.json and the weights' hash alone (no model is built)."""
        cfg, weights_url, src = locate_official_files(self.location)
        config = parse_config(cfg, source=src, hint=self.family)
        official = OfficialTokenizer(config=config, model=None, source=src,  # type: ignore[arg-type]
                                     weights_sha256=weights_sha256(weights_url),
                                     depth_resample=self.depth_resample)  # type: ignore[arg-type]
        official.check_supported()
        return official_card(official, self.label_folder, input_size)


def _split_prefix(given: str) -> tuple[str, str]:
    """``NAME[:OPTION]=LOCATION`` → (``NAME[:OPTION]``, LOCATION); ("", given) without such a
    prefix (an ``=`` inside a path or URL is not one)."""
    name, sep, rest = given.partition("=")
    return (name, rest) if sep and rest and "/" not in name and "://" not in name else ("", given)


def parse_request(given: str) -> OfficialRequest | None:
    """``given`` as an official tokenizer request, or None when it names none (a prism4m
    tokenizer directory, say). A hub id counts only when no such local path exists."""
    given = str(given)
    name, rest = _split_prefix(given)
    family = label_folder = None
    resample = "pil_default"
    location = given
    if name:
        base, _, option = name.partition(":")
        known = base in FAMILIES or family_by_domain(base) is not None or base in FAMILIES["edge"].label_folders
        if known:
            location = rest
            if base in FAMILIES["edge"].label_folders:
                family, label_folder = "edge", base
            else:
                family = family_by_name(base).name
            if option:
                if family != "depth" or option not in _RESAMPLE_OPTIONS:
                    raise UserError(f"--tokenizer {given}: unknown option {option!r} (only depth takes one: "
                                    f"{', '.join(_RESAMPLE_OPTIONS)})")
                resample = option
    if is_official_dir(location) or looks_like_hub_id(location):
        return OfficialRequest(location, family, label_folder, resample)
    if family is not None:
        raise UserError(f"--tokenizer {given}: {location} holds no config.json + model.safetensors "
                        "(an ml-4m tokenizer as published)")
    return None


def with_location(given: str, rewrite) -> str:
    """``given`` with its LOCATION part passed through ``rewrite`` (a job file makes relative
    paths absolute this way), keeping a ``NAME[:OPTION]=`` prefix. The hub id of a published
    tokenizer (``EPFL-VILAB/4M_tokenizers_…``) stays one unless the rewritten path exists."""
    given = str(given)
    name, location = _split_prefix(given)
    local = rewrite(location)
    if looks_like_hub_id(location) and family_from_name(location) is not None and not os.path.exists(local):
        return given
    return (f"{name}=" if name else "") + local


def spec_name(family: Family, label_folder: str | None = None) -> str:
    """The tokenize spec (prism4m label folder reading rule) this family's tokens come from."""
    if not family.supported:
        raise UserError(f"{family.short_id}: {family.refusal}")
    if family.name == "edge":
        name = label_folder or family.label_folders[0]
        if name not in family.label_folders:
            raise UserError(f"{family.short_id} tokenizes {' or '.join(family.label_folders)}, not {name!r}")
        return name
    return _SPEC_NAMES[family.name]


def official_card(official: OfficialTokenizer, label_folder: str | None = None,
                  input_size: int = INPUT_SIZE) -> TokenizerCard:
    """The card of an official tokenizer at ``input_size`` (made, not stored)."""
    fam, cfg = official.family, official.config
    name = spec_name(fam, label_folder)
    if fam.kind == "sam_mask":
        return _instance_card(official, name, input_size)
    global_tokens = cfg.mlp is not None
    g = cfg.grid(input_size)
    normalisation = {"ml4m": PREPROCESSING[fam.kind]}
    if fam.kind == "depth":
        normalisation["depth_resample"] = official.depth_resample
    return TokenizerCard(
        type=TYPE, modality=name, token_folder=fam.out_folder_for(name, input_size),
        vocab_size=cfg.codebook_size, n_tokens=cfg.n_tokens(input_size),
        token_grid=[1, cfg.num_codebooks] if global_tokens else [g, g],
        input_size=None if global_tokens else input_size, patch_size=None if global_tokens else cfg.patch_size,
        normalisation=normalisation,
        architecture={"official_id": fam.hub_id, **cfg.describe()},
        weights={"file": WEIGHTS_FILE, "sha256": official.weights_sha256},
        training={"source": "apple/ml-4m published tokenizer", "official_id": fam.hub_id,
                  "loaded_from": official.source,
                  "decoder": "not loaded (tokenizing needs only the encoder and quantizer)"},
    )


def _instance_card(official: OfficialTokenizer, name: str, input_size: int) -> TokenizerCard:
    """SAM instances: like our mask tokenizers' cards, ids per instance (no ``n_tokens``, a
    ``[g, g]`` grid per instance), ``input_size`` the crop side the boxes are in."""
    from prism4m.modality.instances import CONTOUR_EPSILON, MIN_AREA

    fam, cfg = official.family, official.config
    g = cfg.instance_grid
    normalisation = {"ml4m": PREPROCESSING[fam.kind], "kind": "binary_mask", "mask_size": cfg.mask_size,
                     "min_area_px": MIN_AREA, "threshold": 0.5, "contour_epsilon_px": CONTOUR_EPSILON,
                     "cut": "prism4m crop_instances (inferred: ml-4m's extraction is unreleased)"}
    return TokenizerCard(
        type=TYPE, modality=name, token_folder=fam.out_folder_for(name, input_size),
        vocab_size=cfg.codebook_size, n_tokens=None, token_grid=[g, g], input_size=input_size,
        patch_size=cfg.patch_size, normalisation=normalisation,
        architecture={"official_id": fam.hub_id, **cfg.describe(), "mask_size": cfg.mask_size, "grid": g},
        weights={"file": WEIGHTS_FILE, "sha256": official.weights_sha256},
        training={"source": "apple/ml-4m published tokenizer", "official_id": fam.hub_id,
                  "loaded_from": official.source,
                  "decoder": "not loaded (tokenizing needs only the encoder and quantizer)"},
    )


class OfficialStageTokenizer:
    """The tokenize stage's view of a published tokenizer (see module docstring)."""

    type: ClassVar[str] = TYPE

    def __init__(self, official: OfficialTokenizer, label_folder: str | None = None,
                 input_size: int = INPUT_SIZE):
        from prism4m.modality.specs import get_spec

        self.official = official
        self.card = official_card(official, label_folder, input_size)
        try:
            self.spec = get_spec(self.card.modality)
        except KeyError:
            raise UserError(f"{official.family.short_id}: prism4m has no {self.card.modality!r} labels to "
                            "tokenize") from None
        self.input_size = input_size

    @classmethod
    def load(cls, source: str, *, family: str | None = None, label_folder: str | None = None,
             input_size: int = INPUT_SIZE, device: str = "cpu", **kw) -> "OfficialStageTokenizer":
        official = load_official(source, family=family, device=device, **kw)
        official.check_supported()
        return cls(official, label_folder, input_size)

    # ------------------------------------------------------------------ the stage's interface
    @property
    def member_ext(self) -> str:
        """``npy`` (ml-4m's ``KEY.npy``), or ``json`` for SAM instances (our mask tokenizers' member)."""
        return "json" if self.official.family.kind == "sam_mask" else "npy"

    def card_hash(self) -> str:
        return self.card.card_hash()

    def prepare(self, value: np.ndarray, rows: np.ndarray, image_hw: tuple[int, int],
                region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        kind = self.official.family.kind
        if kind in ("feature_map", "feature_global"):
            return self._prepare_features(value, rows, image_hw, region)
        if kind == "sam_mask":
            return self.prepare_sample(value, rows, image_hw, region)[0]
        return self.official.inputs(value, rows, self.input_size).numpy()

    def prepare_sample(self, value: Any, rows: np.ndarray, image_hw: tuple[int, int],
                       region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, Any]:
        """(encoder inputs, layout): layout is None, or for SAM instances the ``CropInstances``
        (which crop each input row belongs to, its box and contour) that ``member_bytes`` needs."""
        if self.official.family.kind == "sam_mask":
            inst = self.official.crop_instances(value, rows, self.input_size)
            return self.official.inputs(inst.masks).numpy(), inst
        return self.prepare(value, rows, image_hw, region), None

    def _prepare_features(self, value, rows, image_hw, region) -> np.ndarray:
        from prism4m.contract.crop_settings import centre_square
        from prism4m.modality.cropping import split_features
        from prism4m.modality.rasters import crop_feature_map

        rows = np.asarray(rows).reshape(-1, 5)
        region = tuple(int(v) for v in (region or centre_square(*image_hw)))
        glob, fmap = split_features(np.asarray(value, dtype=np.float32))
        if self.official.family.kind == "feature_global":
            return np.repeat(glob[None].astype(np.float32), len(rows), axis=0)
        grid = self.official.config.grid(self.input_size)
        out = []
        for r in rows:
            if tuple(int(v) for v in r[:4]) == region and not r[4] and fmap.shape[:2] == (grid, grid):
                out.append(np.ascontiguousarray(fmap.transpose(2, 0, 1)))  # what the labeler computed
            else:
                out.append(crop_feature_map(fmap, r, region, grid))
        return np.stack(out).astype(np.float32)

    def encode(self, batch: Any) -> np.ndarray:
        """Encoder inputs (B, …) → ids (B, n_tokens) int64."""
        x = torch.as_tensor(np.asarray(batch))
        kind = self.official.family.kind
        if kind == "sam_mask" and x.shape[0] == 0:  # no instance in any crop
            return np.zeros((0, int(np.prod(self.card.token_grid))), np.int64)
        if kind == "feature_map":  # save_vq_tokens.py hands the encoder a permuted (channels-last) view
            x = x.contiguous(memory_format=torch.channels_last)
        elif kind == "feature_global":
            x = x[:, :, None, None]
        return self.official.encode(x)

    def member_bytes(self, tokens: np.ndarray, layout: Any = None) -> bytes:
        """``KEY.npy`` int16 ``(n_crops, n_tokens)``, as ml-4m's save_vq_tokens.py writes it; SAM
        instances: the ``KEY.json`` of our mask tokenizers (``modality.instances.member_bytes``)."""
        if self.official.family.kind == "sam_mask":
            from prism4m.modality.instances import member_bytes

            return member_bytes(layout, tokens, self.input_size, int(np.prod(self.card.token_grid)))
        return encode_npy(np.asarray(tokens).astype(np.int16))

    def decode(self, ids: Any) -> np.ndarray:
        raise NotImplementedError(f"{self.official.family.short_id}: prism4m loads only the encoder and quantizer "
                                  "of ml-4m's tokenizers (the DiVAE decoders are diffusion models); no reconstruction")
