from __future__ import annotations

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import ndimage

from wspet.metrics import dice_score
from wspet.postprocess.levelset import chan_vese_refine
from wspet.postprocess.morphology import ellipsoid_structure

PET_SPACING = (3.5, 3.5, 3.1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "postprocess"
SHAPE = (40, 32, 32)


def ball(centre, radius, shape=SHAPE):
    grid = np.indices(shape)
    return sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def pet_scene(seed=0):
    """A lesion (radius 4 voxels, SUV ~6) and, 20 voxels away (~70 mm), a brighter
    region (SUV ~9), blurred like a PET point spread function, plus noise."""
    lesion = ball((10, 16, 16), 4)
    distant = ball((30, 16, 16), 5)
    suv = 1.0 + 5.0 * lesion + 8.0 * distant
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(suv, 1.0) + 0.3 * rng.standard_normal(SHAPE)
    return image, lesion, distant


def test_grows_an_under_segmentation_toward_the_lesion():
    image, lesion, distant = pet_scene()
    pred = ball((10, 16, 16), 2)
    before = dice_score(pred, lesion)
    out = chan_vese_refine(pred, image, PET_SPACING)
    after = dice_score(out, lesion)
    assert before < 0.3
    assert after > 0.85
    assert not (out & distant).any()


def test_does_not_cross_a_gap_to_a_nearby_bright_region():
    # A second bright ball one voxel of background away, well inside the margin.
    lesion, neighbour = ball((12, 16, 16), 3), ball((20, 16, 16), 3)
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(1.0 + 5.0 * (lesion | neighbour), 0.7)
    image += 0.3 * rng.standard_normal(SHAPE)
    out = chan_vese_refine(ball((12, 16, 16), 2), image, PET_SPACING)
    assert dice_score(out, lesion) > 0.9
    assert not (out & neighbour).any()


def test_margin_stops_growth_into_contiguous_bright_anatomy():
    # The lesion touches a bright organ filling i >= 15: the contour flows into it, and
    # only the margin (a ball of 15 mm, 4 voxels in-plane, around the prediction) stops it.
    lesion = ball((12, 16, 16), 3)
    organ = np.zeros(SHAPE, dtype=bool)
    organ[15:, :, :] = True
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(1.0 + 5.0 * (lesion | organ), 0.7)
    image += 0.3 * rng.standard_normal(SHAPE)
    pred = ball((12, 16, 16), 2)
    out = chan_vese_refine(pred, image, PET_SPACING, margin_mm=15.0)
    assert (out & lesion).sum() >= 0.9 * lesion.sum()
    assert (out & organ).any()  # it did flow into the organ ...
    margin = ndimage.binary_dilation(pred, structure=ellipsoid_structure(15.0, PET_SPACING))
    assert not (out & ~margin).any()  # ... but no further than the margin
    assert not out[19:].any()


def test_each_component_refined_in_its_own_margin():
    image, lesion, distant = pet_scene()
    pred = ball((10, 16, 16), 2) | ball((30, 16, 16), 2)
    out = chan_vese_refine(pred, image, PET_SPACING)
    assert dice_score(out & lesion, lesion) > 0.85
    assert dice_score(out & distant, distant) > 0.85


def test_dark_component_is_kept_as_it_was():
    # A prediction on a cold spot: the contour would settle on the darker phase.
    image = np.full((16, 16, 16), 5.0)
    image[6:10, 6:10, 6:10] = 1.0
    pred = np.zeros(image.shape, dtype=bool)
    pred[7:9, 7:9, 7:9] = True
    out = chan_vese_refine(pred, image, PET_SPACING)
    assert np.array_equal(out, pred)


def test_empty_in_empty_out_and_inputs_untouched():
    image, _, _ = pet_scene()
    empty = np.zeros(SHAPE, dtype=bool)
    assert not chan_vese_refine(empty, image, PET_SPACING).any()
    pred = ball((10, 16, 16), 2)
    pred_copy, image_copy = pred.copy(), image.copy()
    out = chan_vese_refine(pred, image, PET_SPACING, iterations=3)
    assert out.dtype == bool and out.shape == pred.shape
    assert np.array_equal(pred, pred_copy) and np.array_equal(image, image_copy)


def test_bad_inputs():
    mask = np.zeros((8, 8, 8), dtype=bool)
    image = np.ones((8, 8, 8))
    with pytest.raises(ValueError, match=r"image shape \(8, 8, 7\) != mask shape \(8, 8, 8\)"):
        chan_vese_refine(mask, np.ones((8, 8, 7)), PET_SPACING)
    with pytest.raises(ValueError, match="image: the level set needs the PET image"):
        chan_vese_refine(mask, None, PET_SPACING)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image: must be finite, found 1 bad voxels"):
        chan_vese_refine(mask, bad, PET_SPACING)
    with pytest.raises(ValueError, match="margin_mm: expected a number > 0, got 0"):
        chan_vese_refine(mask, image, PET_SPACING, margin_mm=0)
    with pytest.raises(ValueError, match="iterations: expected an integer >= 1, got 0"):
        chan_vese_refine(mask, image, PET_SPACING, iterations=0)


def test_config_instantiates():
    cfg = OmegaConf.load(CONF / "levelset.yaml")
    assert cfg.name == "levelset"
    fn = hydra.utils.instantiate(cfg.fn)
    image, lesion, _ = pet_scene()
    pred = ball((10, 16, 16), 2)
    assert dice_score(fn(pred, image, PET_SPACING), lesion) > 0.85
