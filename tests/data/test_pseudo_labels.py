"""Pseudo-labels made inside boxes: lesions recovered, background outside boxes, uncertain voxels ignored."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from wspet.data.boxes import box_region
from wspet.data.pseudo_labels import (
    BACKGROUND,
    IGNORE,
    LESION,
    METHODS,
    central_component,
    inscribed_ellipsoid,
    pseudo_label,
)
from wspet.losses.dice_ce import IGNORE_INDEX


def sphere_scan(shape=(40, 40, 30), centre=(20, 18, 14), radius=5.0, uptake=8.0, seed=0):
    """A noisy SUV volume (background ~1) holding one hot sphere; returns (image, truth)."""
    grid = np.indices(shape).astype(np.float32)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    truth = distance <= radius
    rng = np.random.default_rng(seed)
    image = 1.0 + 0.1 * rng.standard_normal(shape).astype(np.float32) + uptake * truth
    return image, truth


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("method", METHODS)
def test_each_method_recovers_a_sphere_in_a_coarse_box(method):
    image, truth = sphere_scan()
    label = pseudo_label(image, [[12, 10, 6, 29, 27, 23]], method=method, band=0.0, ignore_box_edge=False)
    assert dice(label == LESION, truth) > 0.9


def test_outside_every_box_is_background_even_where_uptake_is_high():
    image, _ = sphere_scan()
    image[0:5, 0:5, 0:5] = 50.0  # an organ outside the box
    label = pseudo_label(image, [[12, 10, 6, 29, 27, 23]])
    outside = np.ones(image.shape, bool)
    outside[12:29, 10:27, 6:23] = False
    assert np.all(label[outside] == BACKGROUND)


def test_only_one_component_of_a_box_is_lesion():
    image, truth = sphere_scan()
    image[12:14, 10:12, 6:8] = 6.0  # another hot corner cut by the same box, cooler than the lesion
    label = pseudo_label(image, [[12, 10, 6, 29, 27, 23]], band=0.0, ignore_box_edge=False)
    assert not np.any(label[12:14, 10:12, 6:8] == LESION)
    assert dice(label == LESION, truth) > 0.9


@pytest.mark.parametrize("method", ["otsu", "fraction"])
def test_the_box_lesion_is_its_central_component_even_beside_hotter_uptake(method):
    image, truth = sphere_scan()
    image[12:14, 10:27, 6:23] = 12.0  # an organ hotter than the lesion (9), cut by the box's face
    box = [12, 10, 6, 29, 27, 23]
    central = pseudo_label(image, [box], method=method, band=0.0, ignore_box_edge=False, component="central")
    assert dice(central == LESION, truth) > 0.9
    assert np.all(central[12:14, 10:27, 6:23] == BACKGROUND)
    # the default: the hottest voxel's component is the organ, and the lesion is taught as background
    peak = pseudo_label(image, [box], method=method, band=0.0, ignore_box_edge=False)
    assert np.all(peak[12:14, 10:27, 6:23] == LESION)
    assert np.all(peak[truth] == BACKGROUND)


def test_a_lesion_with_a_cold_centre_is_still_the_central_component():
    lesion = np.zeros((20, 20, 20), bool)
    grid = np.indices(lesion.shape)
    distance = np.sqrt(sum((g - 9.5) ** 2 for g in grid))
    lesion[(distance >= 3) & (distance <= 6)] = True  # a shell: no voxel at the box centre
    lesion[0:3, 0:3, 0:3] = True  # uptake in a corner
    kept = central_component(lesion)
    assert kept.sum() == lesion.sum() - 27 and not kept[0:3, 0:3, 0:3].any()


def test_without_a_component_in_the_central_region_the_nearest_to_the_centre_is_kept():
    lesion = np.zeros((16, 16, 16), bool)
    lesion[0:2, 0:2, 0:2] = True  # far corner
    lesion[2:4, 6:9, 6:9] = True  # nearer the centre, outside the middle half (rows 4 to 11)
    kept = central_component(lesion)
    assert kept.sum() == 18 and kept[2:4, 6:9, 6:9].all()


def test_an_unknown_component_rule_is_refused_by_name():
    image, _ = sphere_scan()
    with pytest.raises(ValueError, match="'hottest'"):
        pseudo_label(image, [[12, 10, 6, 29, 27, 23]], component="hottest")


def test_voxels_near_the_threshold_and_lesion_on_the_box_edge_are_ignored():
    image, _ = sphere_scan()
    box = [12, 10, 6, 29, 27, 23]
    threshold = 0.41 * image[12:29, 10:27, 6:23].max()
    image[20, 18, 18] = threshold * 1.02  # just above the threshold, inside the sphere's reach
    label = pseudo_label(image, [box], method="fraction", band=0.1)
    assert label[20, 18, 18] == IGNORE
    tight = [15, 13, 9, 26, 24, 20]  # cuts through the sphere: its faces hold lesion voxels
    edged = pseudo_label(image, [tight], method="fraction", band=0.0, ignore_box_edge=True)
    assert np.all(edged[15, 13:24, 9:20] != LESION) and np.any(edged[15, 13:24, 9:20] == IGNORE)
    assert np.any(edged[16:25, 14:23, 10:19] == LESION)


def test_ignore_value_is_the_losses_ignore_index():
    assert IGNORE == IGNORE_INDEX


@given(seed=st.integers(0, 10_000), corner=st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 5)))
@settings(max_examples=25, deadline=None)
def test_lesion_and_ignored_voxels_lie_inside_the_boxes(seed, corner):
    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 1.0, (24, 24, 16)).astype(np.float32)
    i, j, k = corner
    box = [i, j, k, i + 8, j + 9, k + 7]
    label = pseudo_label(image, [box], method=["otsu", "fraction"][seed % 2])
    inside = np.zeros(image.shape, bool)
    inside[i:i + 8, j:j + 9, k:k + 7] = True
    assert set(np.unique(label)) <= {BACKGROUND, LESION, IGNORE}
    assert np.all(label[~inside] == BACKGROUND)


def test_a_box_without_uptake_labels_nothing_and_bad_settings_are_refused():
    assert not np.any(pseudo_label(np.zeros((8, 8, 8), np.float32), [[1, 1, 1, 6, 6, 6]]) == LESION)
    with pytest.raises(ValueError, match="'watershed'"):
        pseudo_label(np.ones((8, 8, 8)), [[1, 1, 1, 6, 6, 6]], method="watershed")
    with pytest.raises(ValueError, match="fraction 1.5"):
        pseudo_label(np.ones((8, 8, 8)), [], fraction=1.5)


def tumour_with_faint_rim(seed=0):
    """A sphere of radius 7 (the clinician's mask) whose core of radius 3 takes SUV ~14 and whose rim
    ~3 over a background of ~1, blurred (the scanner's resolution) and in noise; returns (image,
    truth, its tight box)."""
    shape, centre = (40, 40, 30), (20, 18, 14)
    grid = np.indices(shape).astype(np.float32)
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    truth, core = distance <= 7, distance <= 3
    rng = np.random.default_rng(seed)
    uptake = ndimage.gaussian_filter(1.0 + 2.0 * truth + 11.0 * core, 1.0)
    image = (uptake + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return image, truth, [13, 11, 7, 28, 26, 22]


@pytest.mark.parametrize("method", ["otsu", "fraction"])
def test_span_box_grows_the_lesion_to_the_faces_of_its_tight_box(method):
    image, truth, tight = tumour_with_faint_rim()
    plain = pseudo_label(image, [tight], method=method, band=0.0, ignore_box_edge=False) == LESION
    spanning = pseudo_label(image, [tight], method=method, band=0.0, ignore_box_edge=False, span_box=True) == LESION
    assert dice(plain, truth) < 0.35  # the threshold keeps the hot core alone (0.30 / 0.22)
    assert dice(spanning, truth) > 0.75  # 0.81 / 0.83: a sphere touches its tight box at six points only


def test_span_box_keeps_the_methods_lesion_when_the_box_is_not_tight():
    image, _ = sphere_scan(radius=4.0)
    image = image.round(0)  # a flat background: no threshold above its faces' median reaches them
    coarse = [8, 6, 2, 33, 31, 27]
    plain = pseudo_label(image, [coarse], band=0.0)
    assert np.array_equal(pseudo_label(image, [coarse], band=0.0, span_box=True), plain)
    assert np.any(plain == LESION)


def test_span_box_needs_a_threshold_method_and_a_boolean():
    image, _, tight = tumour_with_faint_rim()
    with pytest.raises(ValueError, match="span_box lowers a threshold, and method 'chan_vese' has none"):
        pseudo_label(image, [tight], method="chan_vese", span_box=True)
    with pytest.raises(ValueError, match="span_box must be true or false, got 'yes'"):
        pseudo_label(image, [tight], span_box="yes")


def test_span_gap_ignore_keeps_the_methods_lesion_and_ignores_what_spanning_adds():
    image, truth, tight = tumour_with_faint_rim()
    options = dict(band=0.0, ignore_box_edge=False, span_box=True)
    plain = pseudo_label(image, [tight], band=0.0, ignore_box_edge=False)
    grown = pseudo_label(image, [tight], **options) == LESION
    gap = pseudo_label(image, [tight], span_gap="ignore", **options)
    assert np.array_equal(gap == LESION, plain == LESION)
    assert np.array_equal(gap == IGNORE, grown & (plain != LESION))
    assert (gap == IGNORE).sum() > (plain == LESION).sum()  # the faint rim outweighs the hot core
    assert not np.any((gap == BACKGROUND) & truth & grown)


def test_span_gap_is_refused_when_unknown():
    image, _, tight = tumour_with_faint_rim()
    with pytest.raises(ValueError, match="span_gap 'background' is not one of"):
        pseudo_label(image, [tight], span_box=True, span_gap="background")


def test_fill_holes_makes_a_cold_core_lesion_and_changes_a_solid_lesion_not():
    # A hot rim around a necrotic (cold) core: Otsu marks the rim; the clinician's tumour holds the core.
    image, truth = sphere_scan(radius=7.0)
    core = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(image.shape), (20, 18, 14)))) <= 4.0
    image[core] = 1.0
    box = [[11, 9, 5, 30, 28, 24]]
    rim = pseudo_label(image, box, band=0.0, ignore_box_edge=False)
    filled = pseudo_label(image, box, band=0.0, ignore_box_edge=False, fill_holes=True)
    assert (rim[core] == BACKGROUND).all() and (filled[core] == LESION).all()
    assert np.array_equal(filled == LESION, (rim == LESION) | core)
    solid, _ = sphere_scan()
    solid_box = [[12, 10, 6, 29, 27, 23]]
    assert np.array_equal(pseudo_label(solid, solid_box, fill_holes=True), pseudo_label(solid, solid_box))


def test_fill_holes_is_refused_when_not_a_boolean():
    image, _ = sphere_scan()
    with pytest.raises(ValueError, match="fill_holes must be true or false, got 'yes'"):
        pseudo_label(image, [[12, 10, 6, 29, 27, 23]], fill_holes="yes")


def test_inscribed_ellipsoid_fills_pi_over_six_of_its_box_and_touches_every_face():
    shape = (40, 30, 20)
    ellipsoid = inscribed_ellipsoid(shape)
    assert ellipsoid.sum() / ellipsoid.size == pytest.approx(np.pi / 6, abs=0.01)
    faces = [ellipsoid[0], ellipsoid[-1], ellipsoid[:, 0], ellipsoid[:, -1], ellipsoid[:, :, 0], ellipsoid[:, :, -1]]
    assert all(face.any() for face in faces)
    assert not inscribed_ellipsoid(shape, 0.8)[0].any()
    assert inscribed_ellipsoid(shape, 0.5).sum() / ellipsoid.size == pytest.approx(np.pi / 48, abs=0.005)


def test_ellipsoid_makes_its_inner_part_lesion_and_ignores_the_rest_of_its_outer_part():
    image, truth, tight = tumour_with_faint_rim()  # Otsu keeps the hot core alone
    plain = pseudo_label(image, [tight], band=0.0, ignore_box_edge=False)
    prior = pseudo_label(image, [tight], band=0.0, ignore_box_edge=False, ellipsoid=[0.8, 1.0])
    region = box_region(tight)
    shape = tuple(stop - start for start, stop in zip(tight[:3], tight[3:]))
    inner, outer = inscribed_ellipsoid(shape, 0.8), inscribed_ellipsoid(shape, 1.0)
    assert (prior[region][inner] == LESION).all()
    assert np.array_equal(prior == LESION, (plain == LESION) | _in_box(inner, tight, image.shape))
    assert np.array_equal(prior[region] == IGNORE, outer & (prior[region] != LESION))
    assert (prior[region][~outer & (plain[region] != LESION)] == BACKGROUND).all()
    assert dice(prior == LESION, truth) > dice(plain == LESION, truth) + 0.3
    outside = ~_in_box(np.ones(shape, dtype=bool), tight, image.shape)
    assert np.array_equal(prior[outside], plain[outside])


@pytest.mark.parametrize(
    ("ellipsoid", "message"),
    [
        ([0.9, 0.8], "needs 0 < inner <= outer"),
        ([0.0, 1.0], "needs 0 < inner"),
        (0.8, "must be \\[inner, outer\\] or null, got 0.8"),
        (["a", 1], "must be \\[inner, outer\\]"),
        ([0.5, 0.8, 1.0], "must be \\[inner, outer\\]"),
        ("12", "must be \\[inner, outer\\] or null, got '12'"),
    ],
)
def test_ellipsoid_is_refused_unless_two_ordered_positive_scales(ellipsoid, message):
    image, _, tight = tumour_with_faint_rim()
    with pytest.raises(ValueError, match=message):
        pseudo_label(image, [tight], ellipsoid=ellipsoid)


def _in_box(mask: np.ndarray, box: list[int], shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=bool)
    full[box_region(box)] = mask
    return full
