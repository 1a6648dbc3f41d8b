"""Box-prompted prediction keeps the prediction inside the test boxes and nothing else."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.postprocess import fill_empty_boxes, restrict_to_boxes


@given(seed=st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_inside_the_boxes_the_prediction_is_kept_and_outside_cleared(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((12, 10, 8)) > 0.5
    boxes = [[1, 2, 0, 5, 7, 4], [4, 0, 3, 11, 4, 8]]
    inside = np.zeros(mask.shape, bool)
    for i0, j0, k0, i1, j1, k1 in boxes:
        inside[i0:i1, j0:j1, k0:k1] = True
    before = mask.copy()
    kept = restrict_to_boxes(mask, boxes)
    assert np.array_equal(kept, mask & inside)
    assert np.array_equal(mask, before)  # the input is not modified


def test_no_box_gives_an_empty_mask_and_a_box_outside_is_refused():
    mask = np.ones((4, 4, 4), bool)
    assert not restrict_to_boxes(mask, []).any()
    with pytest.raises(ValueError, match=r"outside the volume of shape \(4, 4, 4\)"):
        restrict_to_boxes(mask, [[0, 0, 0, 5, 2, 2]])


def _two_lesion_scan():
    """A 20^3 scan with two hot cubes (SUV 10 and 6) on a background of 1, and a box around each."""
    image = np.ones((20, 20, 20), np.float32)
    image[3:6, 3:6, 3:6] = 10.0
    image[12:16, 12:16, 12:16] = 6.0
    return image, [[2, 2, 2, 8, 8, 8], [10, 10, 10, 18, 18, 18]]


def test_by_default_every_box_gets_its_otsu_lesion_joined_and_an_empty_one_is_reported():
    image, boxes = _two_lesion_scan()
    mask = np.zeros(image.shape, bool)
    mask[3:5, 3:5, 3:5] = True    # the model found part of the first lesion only
    mask[0, 0, 0] = True          # and something outside every box
    before = mask.copy()
    kept, filled = fill_empty_boxes(mask, image, boxes)
    assert filled == [1]  # only the box the model left empty is reported
    assert kept[3:6, 3:6, 3:6].all()  # the 10-SUV cube completed around the model's part of it
    assert kept[12:16, 12:16, 12:16].all()  # the 6-SUV cube, all of it above Otsu's threshold of the box
    assert kept.sum() == 27 + 64  # and nothing else: not the background, not outside the boxes
    assert np.array_equal(mask, before)  # the input is not modified
    alone, filled = fill_empty_boxes(mask, image, boxes, union=False)
    assert filled == [1] and np.array_equal(alone[2:8, 2:8, 2:8], before[2:8, 2:8, 2:8])  # the model's answer kept as it is
    assert alone.sum() == 8 + 64


def test_fallback_none_only_restricts_and_an_unknown_fallback_is_refused():
    image, boxes = _two_lesion_scan()
    mask = np.zeros(image.shape, bool)
    kept, filled = fill_empty_boxes(mask, image, boxes, method="none")
    assert filled == [] and not kept.any()
    with pytest.raises(ValueError, match="box_fallback='largest' is not one of"):
        fill_empty_boxes(mask, image, boxes, method="largest")
    with pytest.raises(ValueError, match=r"image shape \(20, 20, 19\) != mask shape"):
        fill_empty_boxes(mask, image[:, :, :19], boxes)


def test_a_box_overlapping_a_filled_box_is_judged_on_the_model_alone():
    image, _ = _two_lesion_scan()
    boxes = [[10, 10, 10, 18, 18, 18], [14, 14, 14, 19, 19, 19]]  # both hold part of the 6-SUV cube
    kept, filled = fill_empty_boxes(np.zeros(image.shape, bool), image, boxes)
    assert filled == [0, 1]


def test_a_filled_box_keeps_its_central_lesion_not_hotter_uptake_at_its_face():
    image = np.ones((20, 20, 20), np.float32)
    image[8:12, 8:12, 8:12] = 5.0   # the lesion, in the middle of the box
    image[4, 4:16, 4:16] = 9.0      # hotter uptake the box's face cuts (an organ's edge)
    box = [4, 4, 4, 16, 16, 16]
    kept, filled = fill_empty_boxes(np.zeros(image.shape, bool), image, [box])
    assert filled == [0]
    assert kept[8:12, 8:12, 8:12].all() and kept.sum() == 64


def test_union_adds_the_boxs_classical_lesion_to_what_the_model_found():
    image, boxes = _two_lesion_scan()
    mask = np.zeros(image.shape, bool)
    mask[3:5, 3:5, 3:5] = True    # the model found part of the first lesion only
    mask[2, 7, 7] = True          # and a voxel of background in the same box, which stays
    kept, filled = fill_empty_boxes(mask, image, boxes, union=True)
    assert filled == [1]  # only the box the model left empty is reported as filled
    assert kept[3:6, 3:6, 3:6].all() and kept[12:16, 12:16, 12:16].all()
    assert kept[2, 7, 7] and kept.sum() == 27 + 64 + 1
    alone, _ = fill_empty_boxes(mask, image, boxes, union=False)
    assert alone[3:6, 3:6, 3:6].sum() == 8  # without union the model's partial answer is kept as it is


def test_a_necrotic_core_of_the_boxs_classical_lesion_is_filled_by_default():
    image = np.ones((20, 20, 20), np.float32)
    image[5:14, 5:14, 5:14] = 10.0
    image[8:11, 8:11, 8:11] = 1.0  # a cold core inside the hot rim
    box = [[3, 3, 3, 16, 16, 16]]
    empty = np.zeros(image.shape, bool)
    kept, _ = fill_empty_boxes(empty, image, box)
    assert kept[5:14, 5:14, 5:14].all() and kept.sum() == 9**3  # the rim and its core, nothing else
    rim, _ = fill_empty_boxes(empty, image, box, fill_holes=False)
    assert not rim[8:11, 8:11, 8:11].any() and rim.sum() == 9**3 - 3**3
