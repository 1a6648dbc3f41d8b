from __future__ import annotations

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
from omegaconf import OmegaConf

from wspet.metrics.lesions import label_components
from wspet.postprocess.morphology import (
    ellipsoid_structure,
    open_and_filter,
    remove_small_components,
)

PET_SPACING = (3.5, 3.5, 3.1)
CONF = Path(__file__).resolve().parents[2] / "conf" / "postprocess"


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= radius**2


def blobs_joined_by_bridge():
    """Two radius-4 balls with a 2-voxel gap between them, spanned by a 1-voxel-thin bridge."""
    shape = (28, 16, 16)
    a, b = ball(shape, (7, 8, 8), 4), ball(shape, (18, 8, 8), 4)
    mask = a | b
    mask[11:15, 8, 8] = True
    return mask, a, b


def test_default_structure_on_pet_grid_is_the_six_connected_cross():
    # 3.5 mm reaches the in-plane and axial neighbours (3.5, 3.1 mm) but no diagonal.
    s = ellipsoid_structure(3.5, PET_SPACING)
    assert s.shape == (3, 3, 3)
    assert s.sum() == 7
    assert s[1, 1, 1] and s[0, 1, 1] and s[1, 1, 0] and not s[0, 0, 1]


def test_structure_is_an_ellipsoid_in_voxels():
    s = ellipsoid_structure(4.0, (1.0, 2.0, 4.0))
    assert s.shape == (9, 5, 3)
    assert s[0, 2, 1] and s[4, 0, 1] and s[4, 2, 0]  # the tips of the three semi-axes
    assert not s[0, 0, 1]
    assert ellipsoid_structure(0.0, PET_SPACING).sum() == 1
    with pytest.raises(ValueError, match="radius_mm: expected a number >= 0, got -1"):
        ellipsoid_structure(-1, PET_SPACING)


def test_opening_splits_blobs_joined_by_a_thin_bridge():
    mask, a, b = blobs_joined_by_bridge()
    assert label_components(mask)[1] == 1
    out = open_and_filter(mask, None, PET_SPACING, min_volume_ml=0.0)
    labels, count = label_components(out)
    assert count == 2
    assert not out[12:14, 8, 8].any()  # the bridge's middle is gone
    # each ball survives nearly whole
    assert (out & a).sum() >= 0.9 * a.sum() and (out & b).sum() >= 0.9 * b.sum()
    assert not (out & ~mask).any()


def test_specks_removed_and_lesion_kept():
    mask = np.zeros((24, 24, 24), dtype=bool)
    lesion = ball(mask.shape, (8, 8, 8), 4)  # 257 voxels = 9.8 ml on the PET grid
    mask |= lesion
    mask[20, 20, 20] = True  # single voxel
    mask[18:20, 2:4, 2:4] = True  # 2x2x2, too thin for the opening
    mask[2:4, 18:21, 18:21] = True  # 2x3x3 slab
    out = open_and_filter(mask, None, PET_SPACING)
    assert label_components(out)[1] == 1
    assert (out & lesion).sum() >= 0.9 * lesion.sum()
    assert not out[18:, :, :].any() and not out[:5, 15:, 15:].any()


def test_volume_filter_threshold_in_ml():
    # No opening: only the volume filter acts. Voxel = 37.975 mm^3;
    # 8 voxels = 0.30 ml (removed at 0.5 ml), 27 voxels = 1.03 ml (kept).
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    mask[6:9, 6:9, 6:9] = True
    out = open_and_filter(mask, None, PET_SPACING, radius_mm=0.0, min_volume_ml=0.5)
    assert out.sum() == 27 and out[7, 7, 7]
    kept_all = remove_small_components(mask, PET_SPACING, 0.3)
    assert kept_all.sum() == 35  # 0.30379 ml >= 0.3
    with pytest.raises(ValueError, match="min_volume_ml: expected a number >= 0, got -0.1"):
        remove_small_components(mask, PET_SPACING, -0.1)


def test_lesion_on_the_volume_border_is_not_eroded_from_outside():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[0:4, 0:4, 0:4] = True  # cut by three border planes
    out = open_and_filter(mask, None, (1.0, 1.0, 1.0), radius_mm=1.0, min_volume_ml=0.0)
    # Only the three cube edges and the corner away from the border lose voxels.
    assert out[0, 0, 0] and out[0, 3, 0] and out[3, 0, 0]
    assert not out[3, 3, 3] and not out[3, 3, 0]
    assert out.sum() == 64 - 10


def test_empty_in_empty_out_and_inputs_untouched():
    empty = np.zeros((6, 6, 6), dtype=bool)
    assert not open_and_filter(empty, None, PET_SPACING).any()
    mask, _, _ = blobs_joined_by_bridge()
    image = np.random.default_rng(0).random(mask.shape)
    mask_copy, image_copy = mask.copy(), image.copy()
    out = open_and_filter(mask, image, PET_SPACING)
    assert out.dtype == bool and out.shape == mask.shape
    assert np.array_equal(mask, mask_copy) and np.array_equal(image, image_copy)


def test_bad_inputs():
    mask = np.zeros((6, 6, 6), dtype=bool)
    with pytest.raises(ValueError, match=r"image shape \(6, 6, 5\) != mask shape \(6, 6, 6\)"):
        open_and_filter(mask, np.zeros((6, 6, 5)), PET_SPACING)
    with pytest.raises(ValueError, match="spacing"):
        open_and_filter(mask, None, (3.5, 3.5))
    with pytest.raises(ValueError, match=r"mask: expected a 3-D .* \(6, 6\)"):
        open_and_filter(np.zeros((6, 6)), None, PET_SPACING)


def test_configs_instantiate():
    morph = OmegaConf.load(CONF / "morphology.yaml")
    assert morph.name == "morphology"
    fn = hydra.utils.instantiate(morph.fn)
    mask, _, _ = blobs_joined_by_bridge()
    assert np.array_equal(fn(mask, None, PET_SPACING), open_and_filter(mask, None, PET_SPACING))
    none = OmegaConf.load(CONF / "none.yaml")
    assert none.name == "none" and none.fn is None
