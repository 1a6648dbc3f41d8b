from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.metrics import dice_score
from wspet.evaluation.reference_rows import (
    REFERENCE_ROWS,
    box_otsu_prediction,
    box_prediction,
    box_threshold_prediction,
    tight_boxes,
)

SHAPE = (24, 24, 24)


def grid_r2(centre) -> np.ndarray:
    i, j, k = np.indices(SHAPE)
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2


def gaussian_blob(centre, sigma, peak) -> np.ndarray:
    return peak * np.exp(-grid_r2(centre) / (2.0 * sigma**2))


def test_tight_boxes_one_per_26_connected_lesion():
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:5, 3:7, 4:6] = 1
    label[5, 7, 6] = 1  # touches the first lesion at a corner only: same lesion
    label[15:18, 15:20, 10:12] = 2
    assert tight_boxes(label) == [[2, 3, 4, 6, 8, 7], [15, 15, 10, 18, 20, 12]]


def test_box_dice_equals_independent_tight_box_dice():
    label = grid_r2((11, 12, 10)) <= 3.2**2  # a sphere
    idx = np.argwhere(label)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = np.zeros(SHAPE, dtype=bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    pred = box_prediction(np.zeros(SHAPE), label)
    assert pred.dtype == bool
    np.testing.assert_array_equal(pred, box)
    expected = 2 * label.sum() / (label.sum() + box.sum())
    assert dice_score(pred, label) == pytest.approx(expected)
    assert 0.5 < expected < 0.7  # a sphere fills ~52% of its box


def test_box_threshold_on_gaussian_blob_selects_the_analytic_ball():
    centre, sigma = (12, 11, 12), 2.5
    image = 1.0 + gaussian_blob(centre, sigma, peak=9.0)
    label = grid_r2(centre) <= 5**2
    pred = box_threshold_prediction(image, label)
    # Voxel centres on the grid: the max is the peak voxel, 10.0. The threshold
    # 0.41 * 10 = 4.1 holds where 9 exp(-r^2 / 2 sigma^2) >= 3.1.
    r2_max = -2 * sigma**2 * math.log(3.1 / 9.0)
    np.testing.assert_array_equal(pred, grid_r2(centre) <= r2_max)
    assert 0 < pred.sum() < label.sum()


def test_box_threshold_uses_each_box_maximum():
    # A hot lesion (peak 10) and a faint one (peak 4): a global 41% threshold (4.1)
    # would miss the faint lesion; per-box thresholds keep both cores.
    image = np.ones(SHAPE)
    label = np.zeros(SHAPE, dtype=bool)
    label[2:8, 2:8, 2:8] = True
    image[2:8, 2:8, 2:8] = 3.0
    image[4:6, 4:6, 4:6] = 10.0
    label[14:20, 14:20, 14:20] = True
    image[14:20, 14:20, 14:20] = 1.5
    image[16:18, 16:18, 16:18] = 4.0
    pred = box_threshold_prediction(image, label)
    expected = np.zeros(SHAPE, dtype=bool)
    expected[4:6, 4:6, 4:6] = expected[16:18, 16:18, 16:18] = True
    np.testing.assert_array_equal(pred, expected)
    assert dice_score(pred, label) == pytest.approx(2 * 16 / (16 + 2 * 216))


def test_box_threshold_fraction_is_inclusive_and_changes_the_result():
    image = np.zeros(SHAPE)
    label = np.zeros(SHAPE, dtype=bool)
    label[5:10, 5, 5] = True
    image[5:10, 5, 5] = [1.0, 2.0, 4.1, 6.0, 10.0]
    assert np.flatnonzero(box_threshold_prediction(image, label)[5:10, 5, 5]).tolist() == [2, 3, 4]
    assert box_threshold_prediction(image, label, fraction=0.5)[5:10, 5, 5].sum() == 2


def test_box_threshold_without_uptake_selects_nothing():
    label = np.zeros(SHAPE, dtype=bool)
    label[3:6, 3:6, 3:6] = True
    assert not box_threshold_prediction(np.zeros(SHAPE), label).any()


@pytest.mark.parametrize("fn", list(REFERENCE_ROWS.values()))
def test_empty_label_gives_empty_prediction(fn):
    pred = fn(np.random.default_rng(0).random(SHAPE), np.zeros(SHAPE, dtype=np.uint8))
    assert pred.shape == SHAPE and not pred.any()


@pytest.mark.parametrize("fn", list(REFERENCE_ROWS.values()))
def test_shape_mismatch_is_an_error(fn):
    with pytest.raises(ValueError, match=r"image shape \(24, 24, 23\) != label shape"):
        fn(np.zeros((24, 24, 23)), np.zeros(SHAPE))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_bad_fraction_is_an_error(fraction):
    with pytest.raises(ValueError, match="fraction"):
        box_threshold_prediction(np.ones(SHAPE), np.ones(SHAPE), fraction=fraction)


def test_non_finite_image_in_a_box_is_an_error():
    image = np.ones(SHAPE)
    image[4, 4, 4] = np.nan
    label = np.zeros(SHAPE, dtype=bool)
    label[3:6, 3:6, 3:6] = True
    with pytest.raises(ValueError, match="non-finite"):
        box_threshold_prediction(image, label)


def test_reference_rows_registry():
    assert list(REFERENCE_ROWS) == ["box", "box_threshold", "box_otsu"]


def test_box_otsu_is_each_boxs_otsu_lesion_with_its_cold_core():
    # A hot shell (SUV 8, radius 6) around a cold core (radius 3) on a background of 1; the label is
    # the whole tumour, as a clinician draws it, and a second, solid lesion elsewhere.
    tumour = grid_r2((9, 9, 9)) <= 36
    core = grid_r2((9, 9, 9)) <= 9
    image = np.ones(SHAPE)
    image[tumour & ~core] = 8.0
    image[19:22, 19:22, 19:22] = 5.0
    label = tumour.copy()
    label[19:22, 19:22, 19:22] = True
    pred = box_otsu_prediction(image, label)
    assert pred.dtype == bool and np.array_equal(pred, label)
    assert not box_otsu_prediction(image, np.zeros(SHAPE)).any()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0.05, 1.0))
def test_threshold_prediction_lies_in_the_box_and_holds_each_maximum(seed, fraction):
    rng = np.random.default_rng(seed)
    image = rng.random((10, 10, 10))
    label = rng.random((10, 10, 10)) > 0.97
    pred = box_threshold_prediction(image, label, fraction=fraction)
    box = box_prediction(image, label)
    assert not (pred & ~box).any()
    for i0, j0, k0, i1, j1, k1 in tight_boxes(label):
        sub = image[i0:i1, j0:j1, k0:k1]
        peak = np.unravel_index(np.argmax(sub), sub.shape)
        assert pred[i0:i1, j0:j1, k0:k1][peak]
