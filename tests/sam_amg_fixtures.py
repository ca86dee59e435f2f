"""A tiny random SAM whose automatic masks are a varied set, for comparing mask generators.

The plain tiny SAM of model_fixtures_sam_clip (seed 0) gives degenerate automatic masks: each
2×2 transposed-convolution kernel of the decoder's upscaling prints its own random pattern, so a
mask is salt-and-pepper speckle whose box is the whole image; its logits are ~0.03, so every
stability score is 0; and one box-NMS survivor is left per image. `vary_tiny_sam` rescales a few
of segment-anything's own parameters (no model code changes, same architecture and state-dict
keys, so the labeler loads it as `tiny`):

1. upscaling kernels made constant over their 2×2 taps (nearest-neighbour upsampling): a mask is
   a union of 16-px image-token cells, smoothed by SAM's bilinear upsampling, instead of speckle;
2. the image encoder's output scaled by 0.1 and the decoder's image→token attention given shared
   query/key projections (seeded, ×6): each image token follows a prompt token decisively, so
   masks depend on the point and on the photo, and differ from point to point;
3. the hypernetwork outputs ×1000: mask logits in the tens, so stability scores spread over
   (0, 1] instead of all being 0;
4. the IoU head recentred per output (×2 around 0.9 for the first multimask output, ~0.5 for the
   other two, which are an empty and an all-image mask with these weights): the predicted-IoU
   filter at 0.88 keeps part of the masks and drops the degenerate outputs.

With SETTINGS below, on skimage photos of ~200 px, a run keeps ~5–15 masks per image at
crop_n_layers 0 and more with crop layers, of areas from ~0.3% to ~50% of the image, after the
IoU filter, stability filter, crop-edge filter and NMS each removed some.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from prism4m.labelers.weights import save_random_weights_marker

# Generator settings the varied tiny SAM is meant for: every filter removes some masks.
SETTINGS = {"points_per_side": 16, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.15,
            "box_nms_thresh": 0.7, "crop_nms_thresh": 0.7}


def vary_tiny_sam(model) -> None:
    """Rescale the tiny SAM's parameters in place (see the module docstring)."""
    g = torch.Generator().manual_seed(1)
    md = model.mask_decoder
    with torch.no_grad():
        for layer in (md.output_upscaling[0], md.output_upscaling[3]):
            layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight).clone())
        model.image_encoder.neck[3].weight.mul_(0.1)
        model.image_encoder.neck[3].bias.mul_(0.1)
        for block in md.transformer.layers:
            a = block.cross_attn_image_to_token
            w = torch.randn(a.internal_dim, a.embedding_dim, generator=g) * 6 / math.sqrt(a.embedding_dim)
            a.q_proj.weight.copy_(w)
            a.k_proj.weight.copy_(w)
            a.q_proj.bias.zero_()
            a.k_proj.bias.zero_()
        for mlp in md.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(1000.0)
        head = md.iou_prediction_head.layers[-1]  # outputs: single-mask, then the 3 multimask ones
        head.weight.mul_(2.0)
        head.bias.mul_(2.0).add_(torch.tensor([0.5, 1.36, 0.34, 0.54]))


def build_sam_varied(directory) -> str:
    """The tiny SAM (seed 0, as build_sam_tiny), varied, saved as a .pth with the random marker."""
    from prism4m.labelers.sam import build_sam

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_sam("tiny")
    vary_tiny_sam(model)
    torch.save(model.state_dict(), d / "sam_tiny_varied.pth")
    save_random_weights_marker(d, note="tiny SAM (segment_anything.modeling, 256 px), rescaled for varied masks")
    return str(d)
