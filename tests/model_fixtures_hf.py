"""Tiny random-weight transformers models, saved the way users' checkpoints are saved.

Each builder constructs a real transformers class from a small config, writes model + image
processor with `save_pretrained(directory)` and marks the directory as random weights, so a
labeler loading `checkpoint: <directory>` runs the same loading path as with real weights.
Seeds are fixed so a builder writes the same weights every time. Shared with other tests
(pose/caption) — keep the signatures stable: `build_<x>(directory) -> directory`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prism4m.labelers.weights import save_random_weights_marker

# A few COCO detection names in the id2label style of COCO detectors (DETR uses 91 ids with gaps).
COCO_NAMES = {1: "person", 2: "bicycle", 3: "car", 17: "cat", 18: "dog", 44: "bottle", 47: "cup", 62: "chair"}


def _finish(model, processor, directory: str | Path, note: str) -> str:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    if processor is not None:
        processor.save_pretrained(d)
    save_random_weights_marker(d, note=note)
    return str(d)


def _tiny_dinov2_config(**extra):
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        patch_size=14, image_size=56, **extra)


def build_depth_anything(directory, input_size: int = 56) -> str:
    """DepthAnythingForDepthEstimation with a 2-layer Dinov2 backbone; processor keeps aspect ratio
    (like the real Depth-Anything-V2 processor), so differently shaped images give different inputs."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    backbone = _tiny_dinov2_config(out_features=["stage1", "stage2"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                              fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[2, 1], patch_size=14)
    proc = DPTImageProcessor(size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
                             ensure_multiple_of=14, resample=3, do_pad=False)
    return _finish(DepthAnythingForDepthEstimation(cfg), proc, directory, "tiny Depth Anything")


def _tiny_dpt_config():
    from transformers import DPTConfig

    return DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                     neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])


def build_dpt_normals(directory) -> str:
    """prism4m's DPTForSurfaceNormals (DPT with a 3-channel head) on a 4-layer ViT."""
    from transformers import DPTImageProcessor

    from prism4m.labelers.normal import DPTForSurfaceNormals

    torch.manual_seed(0)
    proc = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, do_pad=False)
    return _finish(DPTForSurfaceNormals(_tiny_dpt_config()), proc, directory, "tiny DPT normals")


def build_dinov2(directory) -> str:
    from transformers import BitImageProcessor, Dinov2Model

    torch.manual_seed(0)
    proc = BitImageProcessor(do_convert_rgb=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return _finish(Dinov2Model(_tiny_dinov2_config()), proc, directory, "tiny DINOv2")


def build_mask2former(directory, num_labels: int = 133, size: int = 64) -> str:
    """Mask2FormerForUniversalSegmentation with a tiny Swin backbone and COCO-panoptic's 133 labels."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    torch.manual_seed(0)
    swin = SwinConfig(image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=num_labels, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1,
                            decoder_layers=2, num_attention_heads=2, num_queries=8, common_stride=4,
                            id2label={i: f"class_{i}" for i in range(num_labels)},
                            label2id={f"class_{i}": i for i in range(num_labels)})
    proc = Mask2FormerImageProcessor(size={"shortest_edge": size, "longest_edge": 2 * size}, size_divisor=32,
                                     ignore_index=255, num_labels=num_labels)
    return _finish(Mask2FormerForUniversalSegmentation(cfg), proc, directory, "tiny Mask2Former")


def build_detr(directory, num_queries: int = 10) -> str:
    """DetrForObjectDetection with a tiny ResNet backbone (no timm, no pretrained backbone download)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    # contiguous ids like RT-DETR's COCO checkpoints (DETR's own use COCO numbering with "N/A" gaps)
    id2label = dict(enumerate(COCO_NAMES.values()))
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
                          out_features=["stage4"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=resnet, use_pretrained_backbone=False, d_model=32,
                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=num_queries,
                     id2label=id2label, label2id={v: k for k, v in id2label.items() if v != "N/A"})
    proc = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    model = DetrForObjectDetection(cfg)
    with torch.no_grad():  # DETR's small init makes all queries agree; spread them so scores differ
        model.model.query_position_embeddings.weight.normal_(0, 1.0)
        model.class_labels_classifier.weight.normal_(0, 1.0)
    return _finish(model, proc, directory, "tiny DETR")


def build_rtdetr(directory, num_queries: int = 10) -> str:
    """RTDetrForObjectDetection (the example checkpoint's class) with a tiny ResNet, fixed 64² input."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(0)
    id2label = dict(enumerate(COCO_NAMES.values()))
    resnet = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    cfg = RTDetrConfig(backbone_config=resnet, use_pretrained_backbone=False, encoder_hidden_dim=16,
                       encoder_in_channels=[16, 16, 32], feat_strides=[8, 16, 32], encoder_layers=1,
                       encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, decoder_layers=1,
                       decoder_ffn_dim=32, decoder_attention_heads=2, decoder_in_channels=[16, 16, 16],
                       num_feature_levels=3, decoder_n_points=2, num_queries=num_queries, num_denoising=0,
                       id2label=id2label, label2id={v: k for k, v in id2label.items()})
    proc = RTDetrImageProcessor(size={"height": 64, "width": 64})
    return _finish(RTDetrForObjectDetection(cfg), proc, directory, "tiny RT-DETR")
