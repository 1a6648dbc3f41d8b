from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.boxes import (
    box_dice,
    box_region,
    box_volume,
    boxes_from_label,
    boxes_to_mask,
    clip_box,
    grow_box,
)


@st.composite
def shape_and_box(draw):
    """A small volume shape and a valid half-open box inside it."""
    shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    start = [draw(st.integers(0, n - 1)) for n in shape]
    stop = [draw(st.integers(s + 1, n)) for s, n in zip(start, shape)]
    return shape, start + stop


@settings(max_examples=50, deadline=None)
@given(shape_and_box())
def test_boxes_to_mask_covers_exactly_the_box(case):
    shape, box = case
    mask = boxes_to_mask([box], shape)
    assert mask.shape == shape and mask.dtype == np.uint8
    assert int(mask.sum()) == box_volume(box)
    assert mask[box[0]:box[3], box[1]:box[4], box[2]:box[5]].all()


@settings(max_examples=50, deadline=None)
@given(shape_and_box(), st.data())
def test_boxes_to_mask_union_counts_overlap_once(case, data):
    shape, box_a = case
    start = [data.draw(st.integers(0, n - 1)) for n in shape]
    box_b = start + [data.draw(st.integers(s + 1, n)) for s, n in zip(start, shape)]
    overlap = [max(box_a[a], box_b[a]) for a in range(3)] + [
        min(box_a[a + 3], box_b[a + 3]) for a in range(3)
    ]
    shared = np.prod([max(overlap[a + 3] - overlap[a], 0) for a in range(3)])
    mask = boxes_to_mask([box_a, box_b], shape)
    assert int(mask.sum()) == box_volume(box_a) + box_volume(box_b) - shared


def test_boxes_to_mask_empty_list_gives_empty_mask():
    assert boxes_to_mask([], (3, 4, 5)).sum() == 0


@pytest.mark.parametrize(
    "box, fragment",
    [
        ([0, 0, 0, 2, 2], "not 6 ints"),
        ([0, 0, 0, 2, 2, 2.0], "not 6 ints"),
        ([0, 0, True, 2, 2, 2], "not 6 ints"),
        ([0, 2, 0, 2, 2, 2], "start >= stop"),
        ([-1, 0, 0, 2, 2, 2], "outside the volume of shape (4, 4, 4)"),
        ([0, 0, 0, 2, 2, 5], "outside the volume of shape (4, 4, 4)"),
    ],
)
def test_boxes_to_mask_rejects_bad_boxes(box, fragment):
    with pytest.raises(ValueError, match="box") as error:
        boxes_to_mask([[0, 0, 0, 1, 1, 1], box], (4, 4, 4))
    assert fragment in str(error.value)


def test_clip_box_inside_keeps_everything():
    assert clip_box([1, 1, 1, 3, 3, 3], (4, 4, 4)) == ([1, 1, 1, 3, 3, 3], 1.0)


def test_clip_box_half_outside_keeps_half():
    box, kept = clip_box([-2, 0, 0, 2, 2, 2], (4, 4, 4))
    assert box == [0, 0, 0, 2, 2, 2]
    assert kept == pytest.approx(0.5)


def test_clip_box_outside_is_empty_with_zero_fraction():
    box, kept = clip_box([5, 0, 0, 7, 2, 2], (4, 4, 4))
    assert kept == 0.0
    assert box[0] == box[3] == 4


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-6, 14), min_size=6, max_size=6).filter(
    lambda b: all(b[a] < b[a + 3] for a in range(3))
))
def test_clip_box_fraction_is_clipped_volume_over_original(box):
    shape = (8, 8, 8)
    clipped, kept = clip_box(box, shape)
    clipped_volume = np.prod([clipped[a + 3] - clipped[a] for a in range(3)])
    assert kept == pytest.approx(clipped_volume / box_volume(box))
    if kept > 0:
        assert boxes_to_mask([clipped], shape).sum() == clipped_volume


def _two_cubes() -> np.ndarray:
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[2:5, 3:6, 4:7] = 1
    label[10:14, 12:16, 8:10] = 1
    return label


def test_boxes_from_label_gives_one_tight_box_per_component():
    assert boxes_from_label(_two_cubes()) == [[2, 3, 4, 5, 6, 7], [10, 12, 8, 14, 16, 10]]


def test_boxes_from_label_margin_grows_each_side_and_clips():
    assert boxes_from_label(_two_cubes(), margin_vox=2) == [
        [0, 1, 2, 7, 8, 9],
        [8, 10, 6, 16, 18, 12],
    ]
    assert boxes_from_label(_two_cubes(), margin_vox=(0, 1, 3))[0] == [2, 2, 1, 5, 7, 10]


def test_boxes_from_label_scale_about_centre_odd_voxel_to_stop():
    # extents 3, 3, 3 -> round(3 * 1.5) = 5 (4.5 rounds half up): 1 voxel before, 1 after.
    # extents 4, 4, 2 -> 6, 6, 3: 1 before and 1 after; 0 before and 1 after.
    assert boxes_from_label(_two_cubes(), scale=1.5) == [
        [1, 2, 3, 6, 7, 8],
        [9, 11, 8, 15, 17, 11],
    ]


def test_boxes_from_label_scale_then_margin():
    assert boxes_from_label(_two_cubes(), scale=2.0, margin_vox=1)[1] == [7, 9, 6, 17, 19, 12]


def test_boxes_from_label_connectivity():
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[1, 1, 1] = label[2, 2, 2] = 1  # corner contact only
    assert boxes_from_label(label) == [[1, 1, 1, 3, 3, 3]]
    assert len(boxes_from_label(label, connectivity=6)) == 2


def test_boxes_from_label_empty_and_bad_arguments():
    assert boxes_from_label(np.zeros((4, 4, 4))) == []
    with pytest.raises(ValueError, match="connectivity 8"):
        boxes_from_label(_two_cubes(), connectivity=8)
    with pytest.raises(ValueError, match="margin_vox -1"):
        boxes_from_label(_two_cubes(), margin_vox=-1)
    with pytest.raises(ValueError, match="scale 0"):
        boxes_from_label(_two_cubes(), scale=0)
    with pytest.raises(ValueError, match=r"label shape \(4, 4\)"):
        boxes_from_label(np.zeros((4, 4)))


@settings(max_examples=50, deadline=None)
@given(shape_and_box(), st.floats(1.0, 3.0), st.integers(0, 3))
def test_grow_box_contains_the_original(case, scale, margin):
    shape, box = case
    grown = grow_box(box, shape, scale=scale, margin_vox=margin)
    assert all(grown[a] <= box[a] and grown[a + 3] >= box[a + 3] for a in range(3))
    assert all(0 <= grown[a] and grown[a + 3] <= shape[a] for a in range(3))


def test_box_dice_values():
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 1
    assert box_dice([[2, 2, 2, 4, 4, 4]], label) == 1.0
    assert box_dice([[2, 2, 2, 4, 4, 6]], label) == pytest.approx(2 * 8 / (8 + 16))
    assert box_dice([[5, 5, 5, 6, 6, 6]], label) == 0.0
    assert box_dice([], np.zeros((4, 4, 4))) == 1.0


def test_box_region_slices_exactly_the_box_and_refuses_a_bad_one():
    array = np.arange(6 * 5 * 4).reshape(6, 5, 4)
    assert np.array_equal(array[box_region([1, 2, 0, 4, 5, 3])], array[1:4, 2:5, 0:3])
    assert array[box_region(np.array([0, 0, 0, 1, 1, 1]))].shape == (1, 1, 1)
    with pytest.raises(ValueError, match="start >= stop"):
        box_region([2, 0, 0, 2, 1, 1])
