"""The training orientation: checked when read from a checkpoint, and a scan stored in another axis
order predicted as the same scan in the training order would be, its answer on its own grid."""

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.check import majority_orientation
from wspet.model.module import LesionSegmenter
from wspet.model.orientation import check_orientation, model_orientation, turn_to
from wspet.inference.sliding_window import predict_probabilities

LPS = np.diag([-2.0, -3.0, 4.0, 1.0])


def axis_codes(perm, flips):
    """Three axis codes: the pairs L/R, P/A, I/S in the order ``perm``, each its second letter where flipped."""
    pairs = (("L", "R"), ("P", "A"), ("I", "S"))
    return tuple(pairs[p][f] for p, f in zip(perm, flips))


ORIENTATIONS = [axis_codes(perm, flips) for perm in itertools.permutations(range(3))
                for flips in itertools.product((0, 1), repeat=3)]


@pytest.mark.parametrize("codes", [["L", "P", "S"], ("S", "R", "A"), ["A", "I", "L"]])
def test_good_orientations_are_kept(codes):
    assert check_orientation(codes) == tuple(codes)


@pytest.mark.parametrize("codes", [["L", "L", "S"], ["L", "R", "S"], ["L", "P"], "LPS", ["X", "P", "S"],
                                   [0, 1, 2], None, {"_target_": "os.system"}, ["L", "P", "S", "A"]])
def test_bad_orientations_are_refused_by_value(codes):
    with pytest.raises(ValueError, match=r"orientation .* is not three axis codes, one each of L/R, P/A and I/S"):
        check_orientation(codes)


def test_a_checkpoint_from_before_orientations_has_none():
    model = LesionSegmenter(net={"features": [4, 8]}, loss=None)
    assert model_orientation(model) is None
    assert turn_to(LPS, model_orientation(model)) is None


def test_the_orientation_of_most_volumes_is_the_majority():
    lps, ras = ("L", "P", "S"), ("R", "A", "S")
    assert majority_orientation([ras, lps, lps]) == lps
    assert majority_orientation([]) is None


def test_a_scan_already_in_the_training_orientation_is_not_turned():
    assert turn_to(LPS, ("L", "P", "S")) is None


@settings(max_examples=48, deadline=None)
@given(codes=st.sampled_from(ORIENTATIONS), shape=st.tuples(*[st.integers(1, 5)] * 3))
def test_a_turn_and_its_undoing_give_back_the_scan_and_keep_each_voxel_at_its_world_point(codes, shape):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    turn = turn_to(LPS, codes)
    turned, affine = turn.apply(array, LPS) if turn else (array, LPS)
    assert nib.aff2axcodes(affine) == codes
    if turn:
        np.testing.assert_array_equal(turn.undo(turned), array)
    corner = np.array([shape[0] - 1, 0, shape[2] - 1, 1.0])  # a voxel away from the origin
    value = array[tuple(corner[:3].astype(int))]
    world = LPS @ corner
    where = np.round(np.linalg.solve(affine, world)[:3]).astype(int)
    assert turned[tuple(where)] == value


def test_a_turn_gives_the_spacing_in_the_target_axis_order():
    turn = turn_to(LPS, ("S", "L", "P"))  # LPS spacing 2, 3, 4 mm
    assert turn.spacing((2.0, 3.0, 4.0)) == (4.0, 2.0, 3.0)


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("S", "L", "P"), ("A", "I", "R")])
def test_a_scan_in_another_axis_order_gets_the_probabilities_of_the_same_scan_in_the_training_order(codes):
    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": [4, 8]}, loss=None, training_orientation=["L", "P", "S"])
    scan = np.random.default_rng(0).gamma(2.0, 0.5, size=(20, 24, 16)).astype(np.float32)
    expected = predict_probabilities(model, scan, LPS, window=(16, 16, 16), overlap=(4, 4, 4))
    turn = turn_to(LPS, codes)
    stored, stored_affine = turn.apply(scan, LPS)  # the same scan as another converter would store it
    probs = predict_probabilities(model, stored, stored_affine, window=(16, 16, 16), overlap=(4, 4, 4))
    assert probs.shape == stored.shape
    np.testing.assert_allclose(probs, turn.apply(expected, LPS)[0], atol=1e-6)
    unoriented = LesionSegmenter(net={"features": [4, 8]}, loss=None)
    unoriented.load_state_dict(model.state_dict())
    blind = predict_probabilities(unoriented, stored, stored_affine, window=(16, 16, 16), overlap=(4, 4, 4))
    assert np.abs(blind - probs).max() > 0.01  # without the record the network saw the scan otherwise
