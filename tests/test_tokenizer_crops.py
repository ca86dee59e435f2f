"""Crop consistency: one crop row cuts rgb and every label at the same pixels (Invariant 4)."""

from __future__ import annotations

import numpy as np
import pytest

from prism4m.modality.cropping import crop_all
from prism4m.modality.rasters import crop_feature_map, crop_raster
from prism4m.modality.specs import feature_grid, get_spec, normalise

H, W = 60, 90
ROWS = np.array([[0, 15, 60, 60, 0], [7, 3, 41, 53, 1], [20, 30, 33, 47, 0]], dtype=np.int64)


def position_image() -> np.ndarray:
    """A pattern that is a function of pixel position (x in R, y in G, a checker in B)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 2, y * 3, ((x // 5 + y // 5) % 2) * 255], axis=-1).astype(np.uint8)


def nearest_reference(label: np.ndarray, row, size: int) -> np.ndarray:
    """Independent nearest-neighbour crop: output cell centres mapped back to source pixels."""
    top, left, h, w, flip = row
    ys = top + np.floor((np.arange(size) + 0.5) * h / size).astype(int)
    xs = left + np.floor((np.arange(size) + 0.5) * w / size).astype(int)
    out = label[np.ix_(ys, xs)]
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("row", list(ROWS))
def test_rgb_and_edge_label_get_the_same_pixels(row):
    img = position_image()
    rgb = crop_all(get_spec("rgb"), img, row[None], 32, (H, W))[0]
    # a single-channel label that equals the rgb's R channel must crop to rgb's R channel
    edge = crop_all(get_spec("canny_edge"), np.ascontiguousarray(img[..., 0]), row[None], 32, (H, W))[0]
    assert rgb.shape == (3, 32, 32) and edge.shape == (1, 32, 32)
    assert np.array_equal(rgb[0], edge[0])


@pytest.mark.parametrize("row", list(ROWS))
def test_class_map_crop_is_nearest_and_aligned(row):
    y, x = np.mgrid[0:H, 0:W]
    classes = ((x // 3) + 7 * (y // 3)) % 133
    got = crop_all(get_spec("semseg_coco"), classes.astype(np.uint8), row[None], 24, (H, W))[0, 0]
    assert np.array_equal(got, nearest_reference(classes.astype(np.uint8), row, 24))
    # only ids present in the source: nearest never blends classes
    assert set(np.unique(got)) <= set(np.unique(classes))


def test_flip_mirrors_columns_and_inverts_normal_x():
    img = position_image()
    row, flipped = ROWS[0].copy(), ROWS[0].copy()
    flipped[4] = 1
    plain = crop_raster(img, row, 30)
    mirror = crop_raster(img, flipped, 30)
    assert np.array_equal(mirror, plain[:, :, ::-1])
    normal = crop_raster(img, flipped, 30, flip="normal_x")
    assert np.array_equal(normal[0], 255 - plain[0, :, ::-1])   # x component flips sign
    assert np.array_equal(normal[1:], plain[1:, :, ::-1])


def test_sixteen_bit_depth_keeps_precision():
    depth = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7)
    out = crop_raster(depth, [0, 0, H, W, 0], 30, resample="nearest")
    assert out.dtype == np.float32 and out.max() > 255  # not squeezed through 8 bits
    assert np.array_equal(out[0], nearest_reference(depth, (0, 0, H, W, 0), 30).astype(np.float32))


@pytest.mark.parametrize("row", list(ROWS))
def test_feature_map_crop_samples_the_same_image_positions(row):
    # a 6x9 feature grid over the 60x90 image whose channels are the cell-centre coordinates
    gh, gw = 6, 9
    cy = (np.arange(gh) + 0.5) * H / gh
    cx = (np.arange(gw) + 0.5) * W / gw
    fmap = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).astype(np.float32)  # (gh, gw, 2)
    grid = 4
    out = crop_feature_map(fmap, row, (0, 0, H, W), grid)
    top, left, h, w, flip = row
    want_y = top + (np.arange(grid) + 0.5) * h / grid
    want_x = left + (np.arange(grid) + 0.5) * w / grid
    if flip:
        want_x = want_x[::-1]
    # bilinear interpolation of a linear function is exact away from the clamped border
    inner = (want_y > cy[0]) & (want_y < cy[-1])
    inner_x = (want_x > cx[0]) & (want_x < cx[-1])
    assert np.allclose(out[0][inner][:, inner_x], np.repeat(want_y[inner, None], inner_x.sum(), 1), atol=1e-3)
    assert np.allclose(out[1][inner][:, inner_x], np.repeat(want_x[None, inner_x], inner.sum(), 0), atol=1e-3)


def test_feature_map_of_the_centre_square_is_placed_in_it():
    # the labelers' default: the map covers the centred square (row 0's pixels), here x 15..75
    g = 5
    centre = (np.arange(g) + 0.5) * 60 / g
    fmap = np.stack(np.meshgrid(centre, 15 + centre, indexing="ij"), axis=-1).astype(np.float32)  # (y, x)
    value = np.concatenate([np.zeros((1, 2), np.float32), fmap.reshape(-1, 2)])
    out = crop_all(get_spec("dinov2"), value, ROWS[:1], 5 * 14, (H, W))[0]  # row 0, grid 5
    assert np.allclose(out[1], np.repeat((15 + centre)[None], g, 0), atol=1e-3)  # identity on row 0
    assert np.allclose(out[0], np.repeat(centre[:, None], g, 1), atol=1e-3)


def test_feature_layout_and_grid_inference():
    assert feature_grid(6 * 9, (60, 90)) == (6, 9)
    assert feature_grid(16 * 16, (224, 224)) == (16, 16)
    assert feature_grid(12 * 16, (300, 400)) == (12, 16)
    value = np.arange((1 + 6 * 9) * 3, dtype=np.float32).reshape(-1, 3)
    crops = crop_all(get_spec("dinov2_global"), value, ROWS, 224, (H, W))
    assert crops.shape == (3, 3) and (crops == value[0]).all()  # row 0 is the global vector
    fm = crop_all(get_spec("dinov2"), value, ROWS, 56, (H, W))
    assert fm.shape == (3, 3, 4, 4)


def test_normalisation():
    spec = get_spec("rgb")
    x = np.array([[[[0, 255]]]], dtype=np.uint8)
    assert np.allclose(normalise(spec, x), [[[[-1.0, 1.0]]]])
    ids = normalise(get_spec("semseg_coco"), np.array([[[[255, 0, 132]]]], dtype=np.uint8))
    assert ids.tolist() == [[[0, 1, 133]]]  # ml-4m's shift_idx_by_one
    depth = np.random.default_rng(0).normal(1000, 50, size=(2, 1, 16, 16)).astype(np.float32)
    z = normalise(get_spec("depth"), depth)
    assert abs(float(np.median(z[0]))) < 0.2 and 1.0 < float(z[0].std()) < 2.0


def test_a_whole_image_feature_map_keeps_the_model_s_square_grid():
    """clip `fit: resize` stretches a square 14×14 map over the whole image: a 2:1 image's map
    is still 14×14 (its region's aspect must not refactor it into 7×28)."""
    from prism4m.modality.cropping import split_features

    value = np.arange(197 * 3, dtype=np.float32).reshape(197, 3)
    glob, fmap = split_features(value)
    assert fmap.shape == (14, 14, 3)
    assert (glob == value[0]).all() and (fmap[0, 1] == value[2]).all()
