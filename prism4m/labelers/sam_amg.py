"""Batched SAM automatic mask generation: the masks of segment-anything's
`SamAutomaticMaskGenerator`, computed with far less work per image.

`BatchedMaskGenerator(model, …).generate(image)` takes the same settings and returns the same
records as ``SamAutomaticMaskGenerator(model, …, output_mode="coco_rle").generate(image)``; the
model is segment-anything's own `Sam` (image encoder, prompt encoder, mask decoder, its
`postprocess_masks`) and the helpers are segment-anything's (`generate_crop_boxes`,
`build_all_layer_point_grids`, `calculate_stability_score`, `batched_mask_to_box`,
`is_box_near_crop_edge`, `uncrop_*`, `remove_small_regions`, `ResizeLongestSide`), with
torchvision's `batched_nms` and pycocotools for the compressed RLE. What changes is the order and
the batching of the work, never a decision:

1. **One encoder pass per crop layer.** The crops of a layer are resized, normalised and padded
   exactly as `SamPredictor.set_image` does, then encoded as one batch (at most
   `crops_per_batch` at a time) instead of one `set_image` per crop.
2. **Large prompt batches.** `points_per_batch` prompts (default 256, the reference uses 64) go
   through the prompt encoder and mask decoder at once; each gives 3 low-resolution masks.
3. **Filter before upsampling.** The predicted-IoU filter only needs the decoder's scores, so it
   runs on the low-resolution logits; only the masks that pass are upsampled (the reference
   upsamples all 3 × points masks to the crop's size first). The stability score, threshold,
   boxes and crop-edge filter then run on the upsampled logits, in chunks of at most
   `pixels_per_chunk` pixels, all on the model's device.
4. **NMS before encoding.** Box NMS within a crop and across crops needs only boxes and scores,
   so it runs before any mask is encoded; the reference RLE-encodes every mask that passed the
   filters (in a Python loop per mask), most of which NMS then drops. Survivors are upsampled
   again from their low-resolution logits (the same computation on the same numbers) and
   RLE-encoded together: run lengths are found for the whole batch in torch on the device and
   only the counts go to the host, where pycocotools compresses them.
5. **Small regions** (`min_mask_region_area > 0`): holes then islands smaller than the area are
   removed from the survivors only, with the reference's rescoring and NMS. On a GPU,
   `remove_small_regions_batched` does it for all masks at once in torch (connected components by
   max-label propagation: area − 1 passes of a 3×3 max-pool, enough to complete every component
   smaller than the area); on a CPU, where those passes are slow, segment-anything's own
   `remove_small_regions` (OpenCV) runs per mask. Both give the reference's masks exactly.

Floating point: batching changes the order of sums in the encoder and decoder, so logits differ
from the reference's in the last bits. A mask whose score or stability sits exactly at a
threshold can therefore flip; on the tests' images every reference mask is matched at IoU ≥ 0.99
with the same count. Compare runs by mask IoU, never by bytes across batch sizes or machines.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BatchedMaskGenerator:
    def __init__(
        self,
        model,
        points_per_side: int = 32,
        points_per_batch: int = 256,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        crops_per_batch: int = 8,
        pixels_per_chunk: int | None = None,
        small_regions: str = "auto",
    ) -> None:
        from segment_anything.utils.amg import build_all_layer_point_grids
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                       crop_n_points_downscale_factor)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.crops_per_batch = max(1, crops_per_batch)
        # Upsampled masks are handled this many pixels at a time. On a CPU a chunk that fits in
        # cache (4M px: ~10 masks of 512×768) ran 2× faster than 64M px; a GPU wants large ones.
        if pixels_per_chunk is None:
            pixels_per_chunk = 2**26 if self.device.type == "cuda" else 2**22
        self.pixels_per_chunk = pixels_per_chunk
        # "torch": remove_small_regions_batched on the model's device; "opencv": segment-anything's
        # remove_small_regions per mask on the host; "auto": torch on a GPU, OpenCV on a CPU.
        self.small_regions = small_regions

    @property
    def device(self):
        return self.model.device

    # ------------------------------------------------------------------ public
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records as `SamAutomaticMaskGenerator(output_mode="coco_rle").generate`: segmentation
        (COCO RLE, counts str), area, bbox (XYWH of the xyxy box, as the reference), predicted_iou,
        point_coords, stability_score, crop_box."""
        import torch

        with torch.inference_mode():
            return self._generate(image)

    # ------------------------------------------------------------------ stages
    def _generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        import torch
        from segment_anything.utils.amg import generate_crop_boxes
        from torchvision.ops.boxes import batched_nms, box_area

        orig_size = tuple(image.shape[:2])
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops: list[dict] = []
        # Crops come layer by layer (generate_crop_boxes' order, which the reference follows too).
        for layer in sorted(set(layer_idxs)):
            boxes = [b for b, i in zip(crop_boxes, layer_idxs) if i == layer]
            for start in range(0, len(boxes), self.crops_per_batch):
                group = boxes[start:start + self.crops_per_batch]
                features, input_sizes = self._embed(image, group)
                for k, box in enumerate(group):
                    crops.append(self._crop_candidates(features[k:k + 1], input_sizes[k], box, layer, orig_size))
                del features

        n_per_crop = [len(c["iou"]) for c in crops]
        crop_of = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(n_per_crop)])
        boxes = torch.cat([c["boxes"] for c in crops])
        iou = torch.cat([c["iou"] for c in crops])
        stability = torch.cat([c["stability"] for c in crops])
        points = torch.cat([c["points"] for c in crops])
        index_in_crop = torch.cat([torch.arange(n) for n in n_per_crop])
        if len(crops) > 1 and len(boxes):
            # Remove duplicates between crops, preferring masks from smaller crops (as the reference).
            crop_xyxy = torch.tensor([crops[int(i)]["crop_box"] for i in crop_of], dtype=torch.float)
            scores = (1 / box_area(crop_xyxy)).to(boxes.device)
            keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device),
                               iou_threshold=self.crop_nms_thresh).cpu()
            crop_of, boxes, iou, stability = crop_of[keep], boxes[keep.to(boxes.device)], iou[keep.to(iou.device)], \
                stability[keep.to(stability.device)]
            points, index_in_crop = points[keep], index_in_crop[keep]

        masks = self._survivor_masks(crops, crop_of, index_in_crop, orig_size)
        if self.min_mask_region_area > 0 and len(boxes):
            masks, boxes, keep = self._small_regions(masks, boxes)
            iou, stability = iou[keep.to(iou.device)], stability[keep.to(stability.device)]
            points, crop_of = points[keep], crop_of[keep]

        rles = rle_encode(masks)
        areas = masks.flatten(1).sum(1).tolist() if len(masks) else []
        boxes_l, iou_l, stab_l = boxes.cpu().tolist(), iou.float().cpu().tolist(), stability.float().cpu().tolist()
        out = []
        for i, rle in enumerate(rles):
            x0, y0, x1, y1 = boxes_l[i]
            cx0, cy0, cx1, cy1 = crops[int(crop_of[i])]["crop_box"]
            out.append({"segmentation": rle, "area": int(areas[i]), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "predicted_iou": iou_l[i], "point_coords": [points[i].tolist()],
                        "stability_score": stab_l[i], "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0]})
        return out

    def _embed(self, image: np.ndarray, boxes: list[list[int]]):
        """Image embeddings of these crops in one encoder pass; as SamPredictor.set_image per crop."""
        import torch

        inputs, input_sizes = [], []
        for x0, y0, x1, y1 in boxes:
            resized = self.transform.apply_image(image[y0:y1, x0:x1, :])
            t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            input_sizes.append(tuple(t.shape[-2:]))
            inputs.append(self.model.preprocess(t))  # normalise, pad to img_size × img_size
        return self.model.image_encoder(torch.cat(inputs)), input_sizes

    def _upsample(self, low_res, input_size, crop_size):
        """Crop-sized mask logits of (n, h, w) low-resolution logits, as Sam.postprocess_masks."""
        return self.model.postprocess_masks(low_res[:, None], input_size, crop_size)[:, 0]

    def _chunk(self, crop_size) -> int:
        side = self.model.image_encoder.img_size
        return max(1, self.pixels_per_chunk // max(side * side, crop_size[0] * crop_size[1]))

    def _crop_candidates(self, features, input_size, crop_box, layer, orig_size) -> dict:
        """Decoder on every prompt of one crop, filters, NMS within the crop. Keeps the survivors'
        low-resolution logits (for their masks later), boxes in image coordinates, scores."""
        import torch
        from segment_anything.utils.amg import (batched_mask_to_box, calculate_stability_score,
                                                is_box_near_crop_edge, uncrop_boxes_xyxy, uncrop_points)
        from torchvision.ops.boxes import batched_nms

        model, dev = self.model, self.device
        x0, y0, x1, y1 = crop_box
        crop_size = (y1 - y0, x1 - x0)
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        # float64 like the reference (apply_coords returns float64; the prompt encoder casts later)
        coords = torch.as_tensor(self.transform.apply_coords(points, crop_size), device=dev)
        labels = torch.ones(len(coords), dtype=torch.int, device=dev)
        dense_pe = model.prompt_encoder.get_dense_pe()
        low, iou = [], []
        for s in range(0, len(coords), self.points_per_batch):
            sparse, dense = model.prompt_encoder(points=(coords[s:s + self.points_per_batch, None, :],
                                                         labels[s:s + self.points_per_batch, None]),
                                                 boxes=None, masks=None)
            lo, io = model.mask_decoder(image_embeddings=features, image_pe=dense_pe,
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=True)
            low.append(lo.flatten(0, 1))
            iou.append(io.flatten(0, 1))
        low, iou = torch.cat(low), torch.cat(iou)
        point_of = torch.arange(len(coords), device=dev).repeat_interleave(low.shape[0] // max(1, len(coords)))

        keep = torch.arange(len(iou), device=dev)
        if self.pred_iou_thresh > 0.0:
            keep = keep[iou > self.pred_iou_thresh]

        # Stability, threshold, boxes and the crop-edge filter on the upsampled logits, in chunks.
        thr = model.mask_threshold
        kept, stab_kept, boxes_kept = [], [], []
        step = self._chunk(crop_size)
        for s in range(0, len(keep), step):
            idx = keep[s:s + step]
            up = self._upsample(low[idx], input_size, crop_size)
            stab = calculate_stability_score(up, thr, self.stability_score_offset)
            if self.stability_score_thresh > 0.0:
                ok = stab >= self.stability_score_thresh
                idx, up, stab = idx[ok], up[ok], stab[ok]
            boxes = batched_mask_to_box(up > thr)
            del up
            ok = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            kept.append(idx[ok])
            stab_kept.append(stab[ok])
            boxes_kept.append(boxes[ok])
        if kept:
            idx, stab, boxes = torch.cat(kept), torch.cat(stab_kept), torch.cat(boxes_kept)
        else:
            idx = torch.zeros(0, dtype=torch.long, device=dev)
            stab, boxes = torch.zeros(0, device=dev), torch.zeros(0, 4, dtype=torch.long, device=dev)
        nms = batched_nms(boxes.float(), iou[idx], torch.zeros(len(idx), device=dev),
                          iou_threshold=self.box_nms_thresh)
        idx, stab, boxes = idx[nms], stab[nms], boxes[nms]
        pts = torch.as_tensor(points, dtype=torch.float64)[point_of[idx].cpu()]
        return {"low_res": low[idx], "iou": iou[idx], "stability": stab,
                "boxes": uncrop_boxes_xyxy(boxes, crop_box), "points": uncrop_points(pts, crop_box),
                "crop_box": list(crop_box), "input_size": input_size, "crop_size": crop_size}

    def _survivor_masks(self, crops, crop_of, index_in_crop, orig_size):
        """(n, H, W) bool masks of the final survivors, in survivor order, on the device."""
        import torch
        from segment_anything.utils.amg import uncrop_masks

        h, w = orig_size
        out = torch.zeros((len(crop_of), h, w), dtype=torch.bool, device=self.device)
        for c in crop_of.unique().tolist():
            rows = (crop_of == c).nonzero()[:, 0]
            crop = crops[c]
            step = self._chunk(crop["crop_size"])
            for s in range(0, len(rows), step):
                r = rows[s:s + step]
                up = self._upsample(crop["low_res"][index_in_crop[r].to(self.device)], crop["input_size"],
                                    crop["crop_size"])
                out[r.to(self.device)] = uncrop_masks(up > self.model.mask_threshold, crop["crop_box"], h, w)
        return out

    def _small_regions(self, masks, boxes):
        """segment-anything's postprocess_small_regions on dense masks: holes then islands smaller
        than min_mask_region_area removed, changed masks scored 0, NMS prefers unchanged ones."""
        import torch
        from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
        from torchvision.ops.boxes import batched_nms

        area = self.min_mask_region_area
        if self.small_regions == "torch" or (self.small_regions == "auto" and self.device.type != "cpu"):
            new, changed = [], []
            step = max(1, self.pixels_per_chunk // (masks.shape[1] * masks.shape[2]))
            for s in range(0, len(masks), step):
                n, c = remove_small_regions_batched(masks[s:s + step], area)
                new.append(n)
                changed.append(c)
            new, changed = torch.cat(new), torch.cat(changed)
        else:  # OpenCV on the host: on a CPU it beats label propagation by far
            new, changed = [], []
            for m in masks.cpu().numpy():
                m, changed_h = remove_small_regions(m, area, mode="holes")
                m, changed_i = remove_small_regions(m, area, mode="islands")
                new.append(torch.as_tensor(m))
                changed.append(changed_h or changed_i)
            new, changed = torch.stack(new).to(masks.device), torch.as_tensor(changed, device=masks.device)
        new_boxes = batched_mask_to_box(new)
        keep = batched_nms(new_boxes.float(), (~changed).float(), torch.zeros(len(new), device=new.device),
                           iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh))
        # The reference keeps an unchanged mask's old box; a changed one gets its new box.
        boxes = boxes.clone()
        boxes[changed.to(boxes.device)] = new_boxes[changed].to(boxes)
        return new[keep], boxes[keep.to(boxes.device)], keep.cpu()


def _components(fg, max_steps: int):
    """Connected components (8-connectivity) of (n, H, W) bool masks, as far as `max_steps` passes
    of max-label propagation reach: (labels, sizes, closed). labels: (n, H, W) int64, 0 off the
    masks, else a component id shared by the pixels it reached; sizes/closed per id (index = id).
    A component with fewer than max_steps + 2 pixels is complete after max_steps passes (its
    longest 8-connected path is shorter), and its id is `closed`: no pixel of it touches a pixel
    with another id. An id that is not closed belongs to a component still growing, hence large.
    """
    import torch
    import torch.nn.functional as F

    n, h, w = fg.shape
    dtype = torch.float32 if h * w < 2**24 else torch.float64  # exact integer labels in floats
    idx = torch.arange(1, h * w + 1, device=fg.device, dtype=dtype).view(1, h, w)
    lab = torch.where(fg, idx, torch.zeros((), dtype=dtype, device=fg.device))
    for step in range(max_steps):
        new = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0] * fg  # bg pixels stay 0
        if step % 8 == 7 and torch.equal(new, lab):  # converged early (checked now and then)
            lab = new
            break
        lab = new
    big = torch.tensor(float(h * w + 1), dtype=dtype, device=fg.device)
    hi = F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0]
    lo = -F.max_pool2d(-torch.where(fg, lab, big)[:, None], 3, stride=1, padding=1)[:, 0]
    open_px = fg & ((hi != lab) | (lo != lab))
    # One id space for all masks: mask i's labels shifted by i·(H·W + 1); key 0 = off the masks,
    # always present (a leading 0 is added so that id 0 means "off" even if every pixel is on).
    key = (lab.long() + torch.arange(n, device=fg.device).view(n, 1, 1) * (h * w + 1)) * fg
    ids, inverse, sizes = torch.unique(torch.cat([key.new_zeros(1), key.flatten()]), return_inverse=True,
                                       return_counts=True)
    sizes[0] -= 1
    comp = inverse[1:].view(n, h, w)
    closed = torch.ones(len(ids), dtype=torch.bool, device=fg.device)
    closed[comp[open_px]] = False
    return comp, sizes, closed, ids


def remove_small_regions_batched(masks, area_thresh: int):
    """segment-anything's remove_small_regions, holes then islands, on (n, H, W) bool masks at once
    in torch: (new masks, changed per mask). Holes: background components (8-connected, the
    outside included) smaller than area_thresh are filled; islands: mask components smaller than
    area_thresh are dropped, or if all are, all but the largest (ties: the one OpenCV labels
    first). Label propagation needs area_thresh − 1 passes over the masks: cheap on a GPU, slow on
    a CPU (use OpenCV there)."""
    import torch

    n, h, w = masks.shape
    steps = max(0, int(area_thresh) - 1)
    masks = masks.bool()
    # holes: small closed components of the background are filled
    comp, sizes, closed, _ = _components(~masks, steps)
    small = closed & (sizes < area_thresh)
    small[0] = False                                   # id 0 is "not in this image" (the masks)
    fill = small[comp]                                 # only background pixels have these ids
    changed = fill.flatten(1).any(1)
    masks = masks | fill
    # islands: small closed components of the mask are dropped, unless all are small
    comp, sizes, closed, ids = _components(masks, steps)
    small = closed & (sizes < area_thresh)
    small[0] = False
    drop = small[comp]
    has_small = drop.flatten(1).any(1)
    keep_px = masks & ~drop
    all_small = has_small & ~keep_px.flatten(1).any(1)
    if bool(all_small.any()):
        # Keep each such mask's largest component; ties go to OpenCV's lowest label, i.e. the
        # component met first in its scan, which walks 2×2 blocks in row-major order.
        hw1 = h * w + 1
        mask_of = torch.div(ids, hw1, rounding_mode="floor")
        first = torch.full((len(ids),), h * w, dtype=torch.long, device=masks.device)
        ys = torch.arange(h, device=masks.device).view(h, 1)
        xs = torch.arange(w, device=masks.device).view(1, w)
        block = ((ys // 2) * ((w + 1) // 2) + xs // 2).expand(n, h, w)
        first = first.scatter_reduce(0, comp[masks], block[masks], "amin")
        score = sizes * (h * w + 1) + (h * w - first)  # larger first, then earlier first block
        score[0] = -1
        best = torch.full((n,), -1, dtype=torch.long, device=masks.device)
        best = best.scatter_reduce(0, mask_of[1:], score[1:], "amax")
        is_best = torch.zeros(len(ids), dtype=torch.bool, device=masks.device)
        is_best[1:] = score[1:] == best[mask_of[1:]]
        keep_px = keep_px | (all_small.view(n, 1, 1) & is_best[comp] & masks)
    return keep_px, changed | has_small


def rle_encode(masks) -> list[dict]:
    """COCO compressed RLEs ({"size": [h, w], "counts": str}) of (n, H, W) bool masks.

    Run lengths for all masks at once in torch on the masks' device (column-major, first run
    counts zeros, as COCO's); only the run lengths cross to the host, where pycocotools
    compresses them (its frPyObjects, as segment-anything's coco_encode_rle).
    """
    import torch
    from pycocotools import mask as mask_utils

    n = len(masks)
    if n == 0:
        return []
    _, h, w = masks.shape
    flat = masks.transpose(1, 2).reshape(n, h * w)
    rows, cols = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)  # row-major: sorted per mask
    pos = cols + 1                                  # a run ends before each change
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    prev = torch.zeros_like(pos)
    prev[1:] = pos[:-1]
    prev[first] = 0
    runs = (pos - prev).cpu().numpy()
    per_mask = torch.bincount(rows, minlength=n).cpu().numpy()
    last = torch.zeros(n, dtype=pos.dtype, device=pos.device).scatter_reduce(0, rows, pos, "amax", include_self=True)
    tail = (h * w - last).cpu().numpy()
    starts_on = flat[:, 0].cpu().numpy()
    uncompressed = []
    for i, r in enumerate(np.split(runs, np.cumsum(per_mask)[:-1])):
        head = [0] if starts_on[i] else []
        uncompressed.append({"size": [h, w], "counts": np.concatenate([head, r, [tail[i]]]).astype(np.uint32)})
    rles = mask_utils.frPyObjects(uncompressed, h, w)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("utf-8")} for r in rles]
