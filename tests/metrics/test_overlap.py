from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from wspet.metrics import as_mask, dice_score


def cube(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


def test_dice_of_cubes_shifted_by_one_voxel():
    # 2x2x2 cubes shifted by one voxel along i share 4 of their 8 voxels: 2*4/16.
    a = cube((6, 6, 6), (1, 1, 1), 2)
    b = cube((6, 6, 6), (2, 1, 1), 2)
    assert dice_score(a, b) == pytest.approx(0.5)


def test_dice_of_nested_cubes():
    # 2^3 inside 4^3: 2*8 / (8 + 64).
    a = cube((8, 8, 8), (2, 2, 2), 4)
    b = cube((8, 8, 8), (3, 3, 3), 2)
    assert dice_score(a, b) == pytest.approx(16 / 72)


def test_dice_empty_cases():
    empty = np.zeros((4, 4, 4), dtype=bool)
    full = cube((4, 4, 4), (0, 0, 0), 2)
    assert dice_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0
    assert dice_score(empty, full) == 0.0


def test_dice_accepts_torch_and_label_maps():
    a = cube((6, 6, 6), (1, 1, 1), 2)
    labels = a.astype(np.int32) * 7  # a lesion id, not 1
    b = torch.from_numpy(cube((6, 6, 6), (2, 1, 1), 2).astype(np.float32))
    assert dice_score(labels, b) == pytest.approx(0.5)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred shape \(4, 4, 4\) != gt shape \(4, 4, 5\)"):
        dice_score(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_probabilities_are_rejected():
    with pytest.raises(ValueError, match="pred: float mask must hold only 0 and 1.*0.3"):
        dice_score(np.full((2, 2, 2), 0.3), np.ones((2, 2, 2)))


def test_as_mask_rejects_non_numeric():
    with pytest.raises(ValueError, match="gt: expected a numeric or boolean mask"):
        as_mask(np.array([["a"]]), "gt")


masks = arrays(dtype=bool, shape=(5, 5, 5))


@settings(max_examples=50, deadline=None)
@given(a=masks, b=masks)
def test_dice_properties(a, b):
    d = dice_score(a, b)
    assert 0.0 <= d <= 1.0
    assert d == pytest.approx(dice_score(b, a))
    assert dice_score(a, a) == 1.0
    if (a & b).any():
        assert d > 0.0
    else:
        assert d == (1.0 if not a.any() and not b.any() else 0.0)


@settings(max_examples=50, deadline=None)
@given(a=masks)
def test_dice_of_masks_on_disjoint_halves_is_zero(a):
    left, right = np.zeros_like(a), np.zeros_like(a)
    left[:, :, :2], right[:, :, 3:] = a[:, :, :2], a[:, :, 3:]
    expected = 1.0 if not left.any() and not right.any() else 0.0
    assert dice_score(left, right) == expected
