"""Every crop row of one sample's label → the un-normalised encoder batch, by modality kind.

Rasters and feature maps are cut by rasters.py, SAM instances by instances.crop_instances;
poses do not depend on the crop (poses.pose_vectors). A feature map covers the centred
square by default (crop_settings row 0, what the feature labelers encode).
"""

from __future__ import annotations

import numpy as np

from prism4m.contract.crop_settings import centre_square
from prism4m.modality.instances import crop_instances
from prism4m.modality.poses import pose_vectors
from prism4m.modality.rasters import crop_feature_map, crop_raster
from prism4m.modality.specs import TokenSpec, feature_grid


def split_features(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labeler layout (1 + h*w, C) → (global (C,), map (h, w, C)).

    The grid is the model input's, and that input is square (``fit: center_crop`` or
    ``resize``), whatever region of the image it covers: a 14×14 map stretched over a 2:1
    image is still 14×14, not the 7×28 the region's aspect would suggest."""
    h, w = feature_grid(value.shape[0] - 1, (1, 1))
    return value[0], value[1:].reshape(h, w, value.shape[1])


def crop_all(spec: TokenSpec, value: np.ndarray, rows: np.ndarray, input_size: int,
             image_hw: tuple[int, int], region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Every crop row of one sample → the un-normalised encoder batch for ``spec``.

    image/classes: (n, C, S, S); feature: (n, C, g, g) with g = S // patch; global: (n, C);
    instances: (instances kept over all crops, 1, 64, 64) masks (instances.crop_instances);
    pose: (persons, 51) box-relative keypoints, whatever the rows (poses.pose_vectors).
    ``region``: what a feature map covers (default: the centred square, see module docstring).
    """
    rows = np.asarray(rows).reshape(-1, 5)
    if spec.kind == "instances":
        return crop_instances(value, rows, input_size).masks
    if spec.kind == "pose":
        return pose_vectors(value)
    if spec.kind in ("image", "classes"):
        return np.stack([crop_raster(value, r, input_size, spec.resample, spec.flip) for r in rows])
    region = region or centre_square(*image_hw)  # crop_settings row 0: what feature labelers encode
    glob, fmap = split_features(value)
    if spec.kind == "global":
        return np.repeat(glob[None], len(rows), axis=0)
    grid = input_size // spec.patch_size
    return np.stack([crop_feature_map(fmap, r, region, grid) for r in rows])
