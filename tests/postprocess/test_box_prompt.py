"""Box-prompted prediction keeps the prediction inside the test boxes and nothing else."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.postprocess import restrict_to_boxes


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
