"""SAM instances (4M-21 `sam_instance`) with segment-anything, and their boundaries (`sam_edge`).

sam_instance — the masks of segment-anything's `SamAutomaticMaskGenerator` on the rgb image (a
grid of point prompts, IoU/stability filtering, NMS; all its knobs are in `SamInstanceConfig`),
computed by `prism4m.labelers.sam_amg.BatchedMaskGenerator`: segment-anything's model and
helpers, with prompts batched through the decoder, filters before upsampling, NMS before RLE
(same masks at IoU ≥ 0.99 and the same count, tests/test_sam_batched.py; ~3.5× the reference's
img/s on CPU, see "Speed and settings"). One JSON member per sample (no pickle, unlike ml-4m's
.npy of dicts)::

    {"height": H, "width": W,            # the rgb image; every mask has this size
     "instances": [{"segmentation": {"size": [H, W], "counts": "<COCO compressed RLE, str>"},
                    "bbox": [x, y, w, h],   # pixels, pycocotools.mask.toBbox of the RLE
                    "area": int,            # pixels in the mask
                    "score": float,         # SAM's predicted IoU
                    "stability_score": float}, …]}

Instances are sorted by area (largest first), ties by score then bbox, so a run is
reproducible; empty masks are dropped. Decode with ``pycocotools.mask.decode(inst["segmentation"])``.

sam_edge — derived from sam_instance, no model: 8-bit PNG at the rgb resolution, 255 on the
inner boundary of any instance (mask pixels with an 8-neighbour outside the mask; the image
border is not a boundary), 0 elsewhere.

Weights — `checkpoint` is a SAM ``.pth`` from the segment-anything release (or a ``.safetensors``
of the same state dict), or a directory holding exactly one. `model_type: auto` reads the
architecture from the weights; ``vit_h | vit_l | vit_b`` use segment-anything's builders;
``tiny`` is a 256-px SAM assembled from segment_anything.modeling for tests and smoke runs.

Speed and settings — the cost is the prompts: every point of the grid goes through the mask
decoder (points_per_side² per crop), and each crop layer i adds 4^i crops, each with its own
encoder pass and a grid of (points_per_side / crop_n_points_downscale_factor^i)² prompts, so
crop_n_layers 1 is ~5× the decoder work of 0. More prompts find more, mostly smaller, masks;
NMS removes the duplicates, so the count grows much slower than the prompts. Measured by
benchmarks/bench_sam_amg.py (tiny SAM of tests/sam_amg_fixtures.py, 3 photos at short side 512,
pred_iou 0.88, stability 0.15, NMS 0.7; CPU, 2 cores of a shared, noisy VM; the random model's
mask counts say nothing about a trained SAM's, only how they scale)::

    points_per_side  crop_n_layers  img/s   masks/img
          8                0        13.4      5.7
         16                0         3.7     11.7
         32                0         1.03    16.0
          8                1         4.1      7.7
         16                1         1.14    18.3
         32                1         0.28    30.0

Against `SamAutomaticMaskGenerator` (its default 64 prompts per batch) on the same weights,
settings and photos, at 16 points: 3.5× the img/s at crop_n_layers 0 and 2.9× at 1, every
reference mask matched at IoU ≥ 0.99. What is left on CPU is mostly the decoder itself, whose
work per prompt both pay: the gain grows with image size (the reference upsamples, scores and
RLE-encodes every mask at full resolution) and is ~2–3× on 200-px images. segment-anything's
release defaults are 32 points and no crop layer; a crop layer is for small objects in large
images and costs ~3–4× the time.
"""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, LabelerConfig, MissingWeightsError, Resources
from prism4m.contract.members import encode_json, encode_png
from prism4m.labelers.weights import DeepLabelerConfig, ResolvedCheckpoint, read_state_dict, resolve_checkpoint

LIBRARIES = ("segment-anything", "torch")
RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
RELEASE_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
ModelType = Literal["auto", "vit_h", "vit_l", "vit_b", "tiny"]

# The tiny test architecture: segment-anything's layout at 256 px with narrow layers.
TINY = dict(img_size=256, patch_size=16, embed_dim=64, depth=2, num_heads=2, window_size=4,
            global_attn_indexes=(1,), prompt_dim=32)
# Image-encoder width → model type (the first patch-embedding dimension tells them apart).
WIDTH_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b", TINY["embed_dim"]: "tiny"}


class SamInstanceConfig(DeepLabelerConfig):
    model_type: ModelType = Field("auto", description="SAM architecture; auto = read it from the weights")
    points_per_side: int = Field(32, ge=1, description="prompt grid is points_per_side² points")
    points_per_batch: int = Field(256, ge=1, description="prompts per decoder pass (memory vs speed; masks "
                                  "do not depend on it beyond float rounding)")
    pred_iou_thresh: float = Field(0.88, ge=0, le=1, description="keep masks with predicted IoU above")
    stability_score_thresh: float = Field(0.95, ge=0, le=1, description="keep masks at least this stable")
    stability_score_offset: float = Field(1.0, description="logit offset of the stability score")
    box_nms_thresh: float = Field(0.7, ge=0, le=1, description="box IoU for duplicate removal")
    crop_n_layers: int = Field(0, ge=0, description="extra passes on 2^i × 2^i image crops")
    crop_nms_thresh: float = Field(0.7, ge=0, le=1, description="box IoU for duplicates across crops")
    crop_n_points_downscale_factor: int = Field(1, ge=1, description="fewer points per crop layer")
    min_mask_region_area: int = Field(0, ge=0, description="remove islands/holes smaller than this (px)")


def missing_sam_weights(detail: str) -> MissingWeightsError:
    files = ", ".join(f"{t}: {RELEASE_URL}{f}" for t, f in RELEASE_FILES.items())
    return MissingWeightsError(
        f"labeler 'sam_instance': no model weights available: {detail}. Set "
        f"`labelers.sam_instance.checkpoint` (CLI: --config 'sam_instance.checkpoint=…') to a SAM .pth "
        f"file or a directory holding one. Release checkpoints ({files}) must be downloaded "
        f"beforehand on offline nodes.")


def build_sam(model_type: str):
    """An uninitialised-weights SAM of `model_type` built by segment-anything's own classes."""
    if model_type == "tiny":
        return _build_tiny_sam()
    from segment_anything import sam_model_registry

    if model_type not in RELEASE_FILES:
        raise ValueError(f"unknown SAM model_type {model_type!r}")
    return sam_model_registry[model_type](checkpoint=None)


def _build_tiny_sam():
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    t = TINY
    grid = t["img_size"] // t["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=t["img_size"], patch_size=t["patch_size"], embed_dim=t["embed_dim"], depth=t["depth"],
            num_heads=t["num_heads"], mlp_ratio=4, out_chans=t["prompt_dim"], qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=t["window_size"], global_attn_indexes=t["global_attn_indexes"]),
        prompt_encoder=PromptEncoder(
            embed_dim=t["prompt_dim"], image_embedding_size=(grid, grid),
            input_image_size=(t["img_size"], t["img_size"]), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=t["prompt_dim"], iou_head_depth=3,
            iou_head_hidden_dim=t["prompt_dim"],
            transformer=TwoWayTransformer(depth=2, embedding_dim=t["prompt_dim"], mlp_dim=2 * t["prompt_dim"],
                                          num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def load_state_dict(path: Path) -> dict:
    """A SAM state dict from .pth/.pt or .safetensors (training checkpoints nest it under `model`)."""
    return read_state_dict(path, nested=("model",))


def infer_model_type(state_dict: dict) -> str:
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    if w is None or int(w.shape[0]) not in WIDTH_TO_TYPE:
        raise ValueError("cannot tell the SAM architecture from these weights; set "
                         "`labelers.sam_instance.model_type` (vit_h, vit_l, vit_b or tiny)")
    return WIDTH_TO_TYPE[int(w.shape[0])]


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    if len(files) != 1:
        raise missing_sam_weights(f"{path} holds {len(files)} SAM weight files "
                                  f"({', '.join(p.name for p in files) or 'none'}); point `checkpoint` at one")
    return files[0]


def _sort_key(inst: dict) -> tuple:
    return (-inst["area"], -inst["score"], inst["bbox"])


class SamInstanceLabeler(Labeler):
    name = "sam_instance"
    extension = "json"
    Config = SamInstanceConfig
    # 2: BatchedMaskGenerator (same masks as SamAutomaticMaskGenerator up to float rounding, not
    # the same bytes), so shards made by version 1 are recomputed rather than mixed in.
    version = "2"
    # Automatic mask generation is one image at a time (its prompts are the batch), so the batch
    # only sets how often results are handed back; half a GPU fits ViT-H with room to spare.
    default_resources = Resources(num_cpus=1, num_gpus=0.5, batch_size=8)

    generator = None
    checkpoint: ResolvedCheckpoint | None = None

    def setup(self) -> None:
        from prism4m.labelers.sam_amg import BatchedMaskGenerator

        cfg = self.config
        if not cfg.checkpoint:
            raise missing_sam_weights("checkpoint is not set")
        try:
            resolved = resolve_checkpoint(self.name, cfg.checkpoint, RELEASE_FILES["vit_h"])
        except MissingWeightsError:  # re-worded: SAM weights are release files, not hub repos
            raise missing_sam_weights(f"{cfg.checkpoint!r} is neither an existing path nor a "
                                      f"reachable hub repository") from None
        weights = _weights_file(resolved.path)
        state_dict = load_state_dict(weights)
        self.model_type = infer_model_type(state_dict) if cfg.model_type == "auto" else cfg.model_type
        width = state_dict.get("image_encoder.patch_embed.proj.weight")
        if width is not None and WIDTH_TO_TYPE.get(int(width.shape[0]), self.model_type) != self.model_type:
            # Say it plainly instead of load_state_dict's page of shape mismatches.
            raise ValueError(f"`labelers.sam_instance.model_type` is {self.model_type!r} but {weights.name} "
                             f"holds {WIDTH_TO_TYPE[int(width.shape[0])]!r} weights (or use model_type: auto)")
        model = build_sam(self.model_type)
        model.load_state_dict(state_dict, strict=True)
        model.to(self.device).eval()
        self.checkpoint = ResolvedCheckpoint(resolved.requested, weights, resolved.random_weights)
        self.generator = BatchedMaskGenerator(
            model, points_per_side=cfg.points_per_side, points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh, stability_score_thresh=cfg.stability_score_thresh,
            stability_score_offset=cfg.stability_score_offset, box_nms_thresh=cfg.box_nms_thresh,
            crop_n_layers=cfg.crop_n_layers, crop_nms_thresh=cfg.crop_nms_thresh,
            crop_n_points_downscale_factor=cfg.crop_n_points_downscale_factor,
            min_mask_region_area=cfg.min_mask_region_area)  # compressed RLE, as output_mode="coco_rle"

    def model_provenance(self) -> dict:
        self.ensure_setup()
        prov = self.checkpoint.provenance(*LIBRARIES)
        prov["model_type"] = self.model_type
        return prov

    def instances(self, image: np.ndarray) -> dict:
        from pycocotools import mask as mask_utils

        self.ensure_setup()
        h, w = image.shape[:2]
        out = []
        for ann in self.generator.generate(image):
            rle = ann["segmentation"]
            area = int(mask_utils.area(_bytes_rle(rle)))
            if area == 0:
                continue
            out.append({"segmentation": {"size": [int(s) for s in rle["size"]], "counts": str(rle["counts"])},
                        "bbox": [int(round(v)) for v in mask_utils.toBbox(_bytes_rle(rle)).tolist()],
                        "area": area, "score": float(ann["predicted_iou"]),
                        "stability_score": float(ann["stability_score"])})
        out.sort(key=_sort_key)
        return {"height": int(h), "width": int(w), "instances": out}

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        import torch

        with torch.inference_mode():
            return [encode_json(self.instances(s.image)) for s in batch]


def _bytes_rle(rle: dict) -> dict:
    """pycocotools wants counts as bytes; our JSON stores str."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def decode_instances(data: bytes) -> tuple[tuple[int, int], list[np.ndarray]]:
    """A sam_instance member → ((H, W), list of H×W uint8 masks), in stored order."""
    from pycocotools import mask as mask_utils

    rec = json.load(io.BytesIO(data))
    masks = [mask_utils.decode(_bytes_rle(inst["segmentation"])) for inst in rec["instances"]]
    return (int(rec["height"]), int(rec["width"])), masks


def instance_boundaries(shape: tuple[int, int], masks: list[np.ndarray]) -> np.ndarray:
    """H×W uint8, 255 where a mask pixel has an 8-neighbour outside that mask."""
    import cv2

    edges = np.zeros(shape, dtype=bool)
    kernel = np.ones((3, 3), np.uint8)
    for m in masks:
        m = m.astype(np.uint8)
        # cv2's default erosion border counts outside the image as "inside": borders are not edges.
        edges |= (m > 0) & (cv2.erode(m, kernel) == 0)
    return edges.astype(np.uint8) * 255


class SamEdgeLabeler(Labeler):
    name = "sam_edge"
    extension = "png"
    requires = ("sam_instance",)
    Config = LabelerConfig
    default_resources = Resources(num_cpus=1, num_gpus=0, batch_size=64)

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        out = []
        for s in batch:
            shape, masks = decode_instances(s.inputs["sam_instance"])
            if s.image is not None and tuple(s.image.shape[:2]) != shape:
                raise ValueError(f"sam_instance of {s.key} is {shape}, rgb is {s.image.shape[:2]}")
            out.append(encode_png(instance_boundaries(shape, masks)))
        return out
