from __future__ import annotations

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from omegaconf import OmegaConf

from tests.postprocess.test_morphology import PET_SPACING, ball
from wspet.postprocess.holes import fill_holes, plane_structure

CONF = Path(__file__).resolve().parents[2] / "conf" / "postprocess"


def test_an_enclosed_core_is_filled_and_nothing_else():
    solid = ball((20, 20, 20), (10, 10, 10), 7)
    shell = solid & ~ball((20, 20, 20), (10, 10, 10), 4)
    filled = fill_holes(shell, None, PET_SPACING, in_planes=False)
    assert np.array_equal(filled, solid)


def test_a_core_open_at_one_end_is_filled_in_the_planes_that_ring_it():
    # A hollow cylinder along k, closed at the bottom, open at the top: no 3-D hole, but every
    # k-plane through the wall rings the core.
    grid = np.indices((16, 16, 16))
    radius2 = (grid[0] - 8) ** 2 + (grid[1] - 8) ** 2
    solid = (radius2 <= 25) & (grid[2] >= 3) & (grid[2] <= 12)
    cup = solid & ~((radius2 <= 4) & (grid[2] >= 5))
    assert np.array_equal(fill_holes(cup, None, PET_SPACING, in_planes=False), cup)
    assert np.array_equal(fill_holes(cup, None, PET_SPACING), solid)


def test_a_region_touching_the_border_is_not_a_hole():
    ring = np.zeros((12, 12, 3), dtype=bool)
    ring[2:10, 2:10, :] = True
    ring[4:8, 4:8, :] = False  # a tube through the whole volume along k
    filled = fill_holes(ring, None, PET_SPACING)
    # Ringed in every k-plane, so the planes fill it; the 3-D fill alone would not.
    assert filled[4:8, 4:8, :].all()
    assert not fill_holes(ring, None, PET_SPACING, in_planes=False)[4:8, 4:8, :].any()
    open_ring = ring.copy()
    open_ring[5:7, 2:4, :] = False  # a channel from the core to the outside in every k-plane
    assert np.array_equal(fill_holes(open_ring, None, PET_SPACING), open_ring)


def test_plane_structure_connects_only_within_its_plane():
    s = plane_structure(2)
    assert s.sum() == 5 and s[:, :, 1].sum() == 5 and not s[:, :, 0].any() and not s[:, :, 2].any()


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(*[st.integers(1, 9)] * 3)))
def test_the_result_holds_the_mask_and_is_idempotent(mask):
    before = mask.copy()
    filled = fill_holes(mask, None, PET_SPACING)
    assert np.array_equal(mask, before)
    assert not (mask & ~filled).any()
    assert np.array_equal(fill_holes(filled, None, PET_SPACING), filled)


def test_bad_inputs():
    mask = np.zeros((6, 6, 6), dtype=bool)
    with pytest.raises(ValueError, match=r"image shape \(6, 6, 5\) != mask shape \(6, 6, 6\)"):
        fill_holes(mask, np.zeros((6, 6, 5)), PET_SPACING)
    with pytest.raises(ValueError, match=r"mask: expected a 3-D .* \(6, 6\)"):
        fill_holes(np.zeros((6, 6)), None, PET_SPACING)
    with pytest.raises(ValueError, match="in_planes must be true or false, got 'yes'"):
        fill_holes(mask, None, PET_SPACING, in_planes="yes")


def test_config_instantiates_the_step():
    cfg = OmegaConf.load(CONF / "fill_holes.yaml")
    assert cfg.name == "fill_holes"
    fn = hydra.utils.instantiate(cfg.fn)
    shell = ball((14, 14, 14), (7, 7, 7), 5) & ~ball((14, 14, 14), (7, 7, 7), 2)
    assert np.array_equal(fn(shell, None, PET_SPACING), ball((14, 14, 14), (7, 7, 7), 5))


@settings(max_examples=100, deadline=None)
@given(arrays(bool, st.tuples(*[st.integers(1, 8)] * 3)), st.tuples(*[st.integers(0, 3)] * 6))
def test_a_mask_padded_with_background_fills_as_the_mask_alone(mask, pads):
    # The step works on the mask's bounding box; the background around it must not change the result.
    padded = np.pad(mask, list(zip(pads[:3], pads[3:])))
    inner = tuple(slice(lo, lo + n) for lo, n in zip(pads[:3], mask.shape))
    filled = fill_holes(padded, None, PET_SPACING)
    expected = np.zeros_like(padded)
    expected[inner] = fill_holes(mask, None, PET_SPACING)
    assert np.array_equal(filled, expected)
