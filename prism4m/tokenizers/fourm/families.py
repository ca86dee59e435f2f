"""The tokenizers apple/ml-4m published, and which of our folders each one tokenizes.

Sources: ml-4m README "Tokenizers" table (hub ids, token counts), ``fourm/data/modality_info.py``
(``MODALITY_INFO``: modality keys, vocabulary sizes, ``num_channels``, ``num_labels``),
``cfgs/default/tokenization/**`` (training domains, patch sizes, resolutions) and
``save_vq_tokens.py`` (what is fed to ``model.tokenize``); for SAM instances, whose token
extraction ml-4m did not release, ``run_training_vqvae.py`` / ``SAMInstanceTransform`` (the
tokenizer's training input) and ``plotting_utils.decode_sam_instances`` (how its ids are read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One published tokenizer kind.

    name: our short name (the ``_fixture`` folders use it too)
    domain: ml-4m's training ``domain`` (``config.json`` key when present)
    hub_id: the published checkpoint
    label_folders: our label folders it tokenizes, in preference order
    out_folder: the folder written: ml-4m's modality key (``tok_rgb@224``…) or, for SAM instances,
        prism4m's ``sam_instance@224``; ``{res}`` is the input (crop) size
    kind: how inputs are made (see ``preprocess.py``)
    supported: False → ``tokenize`` refuses it with ``refusal``
    """

    name: str
    domain: str
    hub_id: str
    label_folders: tuple[str, ...]
    out_folder: str
    kind: str
    supported: bool = True
    refusal: str = ""

    @property
    def short_id(self) -> str:
        return self.hub_id.split("/", 1)[1]

    def out_folder_for(self, label_folder: str, res: int) -> str:
        if self.name == "edge":  # one tokenizer serves Canny and SAM edges (demo_4M_sampler.py L271-272)
            return f"tok_{label_folder}@{res}"
        return self.out_folder.format(res=res)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("rgb", "rgb", "EPFL-VILAB/4M_tokenizers_rgb_16k_224-448", ("rgb",), "tok_rgb@{res}", "rgb"),
    Family("depth", "depth", "EPFL-VILAB/4M_tokenizers_depth_8k_224-448", ("depth",), "tok_depth@{res}", "depth"),
    Family("normal", "normal", "EPFL-VILAB/4M_tokenizers_normal_8k_224-448", ("normal",), "tok_normal@{res}",
           "normal"),
    Family("edge", "canny_edge", "EPFL-VILAB/4M_tokenizers_edge_8k_224-512", ("canny_edge", "sam_edge"),
           "tok_canny_edge@{res}", "edge"),
    Family("semseg", "semseg_coco", "EPFL-VILAB/4M_tokenizers_semseg_4k_224-448", ("semseg_coco",),
           "tok_semseg@{res}", "semseg"),
    Family("clip", "CLIP-B16", "EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448", ("clip",), "tok_clip@{res}",
           "feature_map"),
    Family("dinov2", "DINOv2-B14", "EPFL-VILAB/4M_tokenizers_DINOv2-B14_8k_224-448", ("dinov2",),
           "tok_dinov2@{res}", "feature_map"),
    Family("imagebind", "ImageBind-H14", "EPFL-VILAB/4M_tokenizers_ImageBind-H14_8k_224-448", ("imagebind",),
           "tok_imagebind@{res}", "feature_map"),
    Family("dinov2_global", "DINOv2-B14-global", "EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224",
           ("dinov2",), "tok_dinov2_global", "feature_global"),
    Family("imagebind_global", "ImageBind-H14-global",
           "EPFL-VILAB/4M_tokenizers_ImageBind-H14-global_8k_16_224", ("imagebind",), "tok_imagebind_global",
           "feature_global"),
    # 64×64 instance masks → 16 ids per instance; writes the folder our mask tokenizers write
    # (sam_instance/ holds the RLE labels; ml-4m's own layout: `prism4m export --format ml4m-sam`)
    Family("sam_instance", "sam_mask", "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64", ("sam_instance",),
           "sam_instance@{res}", "sam_mask"),
    Family("human_poses", "human_poses", "EPFL-VILAB/4M_tokenizers_human-poses_1k_8", ("human_poses",),
           "human_poses", "pose", supported=False,
           refusal="the official human-poses tokenizer encodes SMPL body poses (207 values: 23 joint rotation "
                   "matrices, as HMR2.0 predicts them); prism4m's human_poses labels are 17 COCO keypoints, so "
                   "its ids would mean nothing. Train a pose tokenizer on our keypoints instead "
                   "('prism4m tokenizer train --modality human_poses')"),
]}

_BY_DOMAIN = {f.domain: f for f in FAMILIES.values()}
_BY_SHORT = {f.short_id.lower(): f for f in FAMILIES.values()}
_ID_RE = re.compile(r"4M_tokenizers_([A-Za-z0-9][A-Za-z0-9._-]*)", re.IGNORECASE)


def family_by_domain(domain: str | None) -> Family | None:
    return _BY_DOMAIN.get(domain or "")


def family_from_name(text: str) -> Family | None:
    """The family named by a hub id or a path that contains one (``…/4M_tokenizers_rgb_16k_224-448``,
    ``models--EPFL-VILAB--4M_tokenizers_rgb_16k_224-448/snapshots/…``)."""
    for m in _ID_RE.finditer(text):
        hit = _BY_SHORT.get(f"4m_tokenizers_{m.group(1)}".lower())
        if hit:
            return hit
    return None


def family_by_name(name: str) -> Family:
    if name in FAMILIES:
        return FAMILIES[name]
    hit = family_by_domain(name) or family_from_name(name)
    if hit is None:
        raise KeyError(f"unknown ml-4m tokenizer {name!r}; known: {', '.join(FAMILIES)}")
    return hit
