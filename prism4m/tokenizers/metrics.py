"""Held-out reconstruction metrics by modality kind (recorded in the card)."""

from __future__ import annotations

import math

import numpy as np
import torch

from prism4m.modality.specs import TokenSpec, denormalise_unit


def psnr(mse: float, peak: float = 255.0) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


def class_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the classes present in either map."""
    ious = []
    for c in np.union1d(np.unique(pred), np.unique(target)):
        inter = np.logical_and(pred == c, target == c).sum()
        union = np.logical_or(pred == c, target == c).sum()
        ious.append(inter / union)
    return {"pixel_accuracy": float((pred == target).mean()), "miou": float(np.mean(ious)) if ious else 1.0}


def mask_iou(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean IoU over masks (N, …) of 0/1 values (> 0.5 is inside); two empty masks agree fully."""
    p = pred.reshape(len(pred), -1) > 0.5
    t = target.reshape(len(target), -1) > 0.5
    inter, union = (p & t).sum(1), (p | t).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"mask_iou": float(iou.mean()) if len(iou) else 1.0, "pixel_accuracy": float((p == t).mean())}


def keypoint_error(x: np.ndarray, recon: np.ndarray) -> float:
    """Mean distance between keypoints of (N, 17·3) box-relative poses (modality.poses), in box sides."""
    a, b = x.reshape(len(x), -1, 3), recon.reshape(len(recon), -1, 3)
    return float(np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]).mean()) if len(a) else 0.0


def reconstruction_metrics(spec: TokenSpec, x: np.ndarray, recon: np.ndarray,
                           stats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """``x`` and ``recon`` in the encoder's input space (class maps: ids; masks: probabilities);
    ``stats``: the standardisation (mean, std), to report poses in box units."""
    if spec.kind == "classes":
        return class_iou(recon, x, spec.num_classes)
    if spec.kind == "instances":
        return mask_iou(recon, x)
    out = {"mse": float(np.mean((recon - x) ** 2))}
    if spec.kind == "pose":
        if stats is not None:
            mean, std = stats
            out["keypoint_error_box"] = keypoint_error(x * std + mean, recon * std + mean)
        return out
    if spec.normalise == "unit":
        mse255 = float(np.mean((denormalise_unit(recon) - denormalise_unit(x)) ** 2))
        out.update({"mse_255": mse255, "psnr": psnr(mse255)})
        if spec.channels == 1 and spec.name.endswith("edge"):
            out["edge_iou"] = class_iou(recon > 0, x > 0, 2)["miou"]
    else:
        a = x.reshape(len(x), -1) if spec.kind == "global" else np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        b = recon.reshape(len(recon), -1) if spec.kind == "global" else np.moveaxis(recon, 1, -1).reshape(-1, x.shape[1])
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)
        out["cosine"] = float(cos.mean())
    return out


