"""Test-time mirroring's axes: the user's setting and a checkpoint's training flips, both checked."""

import pytest

from wspet.model.flips import check_mirror_axes, model_mirror_axes
from wspet.model.module import LesionSegmenter


@pytest.mark.parametrize("axes", [[3], [0, 0], ["x"], [True], [-1], "02", "none", 2, None, [[0]]])
def test_bad_mirror_axes_are_refused_by_value(axes):
    with pytest.raises(ValueError, match=r"mirror_axes .* needs auto or a list of distinct volume axes among 0, 1, 2"):
        check_mirror_axes(axes)


@pytest.mark.parametrize("value, axes", [("auto", "auto"), ([2, 0], (0, 2)), ((1,), (1,)), ([], ())])
def test_good_mirror_axes_are_kept_sorted(value, axes):
    assert check_mirror_axes(value) == axes


@pytest.mark.parametrize("flips, setting, axes", [
    ([0, 2], "auto", (0, 2)),   # the flips its training saw
    ([], "auto", ()),           # trained without flips: no mirroring
    (None, "auto", ()),         # a checkpoint from before training_flips: no mirroring
    ([0, 2], [1], (1,)),        # a list is the user's choice, whatever the training saw
    ([0, 2], [], ()),
])
def test_auto_mirrors_along_the_models_own_training_flips(flips, setting, axes):
    model = LesionSegmenter(net={"features": [4, 8]}, loss=None, training_flips=flips)
    assert model_mirror_axes(model, setting) == axes
