from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.inference.measurements import LESION_COLUMNS, lesion_table, sphere_offsets, write_lesion_csv

# i -> world y (2 mm), j -> world -x (3 mm), k -> world z (4 mm), shifted: a permuted, flipped,
# anisotropic grid whose voxel is 24 mm^3.
TWISTED = np.array([
    [0.0, -3.0, 0.0, 10.0],
    [2.0, 0.0, 0.0, -20.0],
    [0.0, 0.0, 4.0, 5.0],
    [0.0, 0.0, 0.0, 1.0],
])


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_sphere_volume_suv_tlg_and_centroid_through_the_affine():
    mask = ball((20, 20, 20), (8, 9, 10), 3)
    suv = np.ones((20, 20, 20), np.float32)
    suv[mask] = 4.0
    suv[8, 9, 10] = 10.0
    n = int(mask.sum())
    assert n == 123  # integer points within radius 3

    (row,) = lesion_table(mask, suv, TWISTED)

    assert row["lesion"] == 1 and row["n_voxels"] == n
    assert row["volume_ml"] == pytest.approx(n * 24 / 1000)
    assert row["suv_max"] == pytest.approx(10.0)
    suv_mean = (4.0 * (n - 1) + 10.0) / n
    assert row["suv_mean"] == pytest.approx(suv_mean)
    assert row["tlg"] == pytest.approx(suv_mean * n * 24 / 1000)
    # Centre voxel (8, 9, 10): x = -3*9 + 10, y = 2*8 - 20, z = 4*10 + 5.
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx((-17.0, -4.0, 45.0))
    assert (row["peak_i"], row["peak_j"], row["peak_k"]) == (8, 9, 10)
    assert [row[k] for k in ("i0", "j0", "k0", "i1", "j1", "k1")] == [5, 6, 7, 12, 13, 14]


def test_sphere_offsets_of_a_4mm_grid_are_centre_faces_and_edges():
    # 4 mm voxels: faces at 4 mm and edges at 5.66 mm are within 6.2 mm, corners (6.93 mm) not.
    offsets = sphere_offsets(np.diag([4.0, 4.0, 4.0, 1.0]))
    assert len(offsets) == 19
    assert not any(np.all(np.abs(offsets) == 1, axis=1))


def test_suv_peak_is_the_mean_over_the_1ml_sphere_on_the_hottest_voxel():
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    suv = np.zeros((9, 9, 9))
    mask = np.zeros((9, 9, 9), bool)
    mask[3:6, 3:6, 3:6] = True
    suv[mask] = 5.0
    suv[4, 4, 5] = 10.0  # hottest voxel on the lesion's top face
    suv[4, 4, 6] = 100.0  # its neighbour outside the lesion still counts: the sphere is over the image
    (row,) = lesion_table(mask, suv, affine)
    # 19 voxels: the hottest (10), 13 lesion voxels at 5, and 5 voxels in slice k = 6 (100, 0, 0, 0, 0).
    assert row["suv_peak"] == pytest.approx((10 + 13 * 5 + 100) / 19)
    assert row["suv_max"] == pytest.approx(10.0)


def test_suv_peak_sphere_is_clipped_to_the_image():
    suv = np.zeros((5, 5, 5))
    suv[0, 0, 0] = 7.0
    suv[1, 0, 0] = 3.0
    mask = suv > 0
    (row,) = lesion_table(mask, suv, np.diag([4.0, 4.0, 4.0, 1.0]))
    # Inside the image around the corner voxel: itself, 3 faces and 3 edges.
    assert row["suv_peak"] == pytest.approx((7.0 + 3.0) / 7)


def test_two_lesions_give_two_rows_and_diagonal_contact_is_one_lesion():
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[3, 3, 3] = 1  # touches the first block by a corner only: same lesion (26-connectivity)
    mask[8:11, 8:10, 8:9] = 1
    suv = np.where(mask > 0, 2.0, 0.5)
    rows = lesion_table(mask, suv, np.eye(4))
    assert [r["lesion"] for r in rows] == [1, 2]
    assert [r["n_voxels"] for r in rows] == [9, 6]
    assert [r["volume_ml"] for r in rows] == pytest.approx([0.009, 0.006])


def test_empty_mask_has_no_rows():
    assert lesion_table(np.zeros((4, 4, 4)), np.ones((4, 4, 4)), np.eye(4)) == []


def test_bad_inputs_are_refused_with_the_values():
    with pytest.raises(ValueError, match=r"mask shape \(4, 4, 4\) != suv shape \(4, 4, 5\)"):
        lesion_table(np.zeros((4, 4, 4)), np.ones((4, 4, 5)), np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        lesion_table(np.zeros((4, 4, 4)), np.ones((4, 4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]))
    suv = np.ones((4, 4, 4))
    suv[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        lesion_table(np.ones((4, 4, 4)), suv, np.eye(4))


def test_write_lesion_csv_keeps_extra_columns_first(tmp_path):
    mask = ball((10, 10, 10), (5, 5, 5), 2)
    rows = [{"case": "a", **row} for row in lesion_table(mask, mask * 3.0, np.diag([2.0, 2.0, 2.0, 1.0]))]
    path = write_lesion_csv(rows, tmp_path / "out" / "lesions.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["case", *LESION_COLUMNS]
    assert read[0]["case"] == "a" and float(read[0]["suv_mean"]) == pytest.approx(3.0)
    assert float(read[0]["volume_ml"]) == pytest.approx(mask.sum() * 8 / 1000)
    empty = write_lesion_csv([], tmp_path / "empty.csv")
    assert empty.read_text().strip().split(",") == list(LESION_COLUMNS)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_rows_partition_the_mask(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((8, 7, 6)) < 0.15
    suv = rng.uniform(0.5, 9.0, mask.shape)
    rows = lesion_table(mask, suv, np.diag([2.0, 3.0, 1.5, 1.0]))
    assert sum(r["n_voxels"] for r in rows) == int(mask.sum())
    for row in rows:
        assert row["suv_mean"] <= row["suv_max"] + 1e-12
        assert row["tlg"] == pytest.approx(row["suv_mean"] * row["volume_ml"])
        box = mask[row["i0"]:row["i1"], row["j0"]:row["j1"], row["k0"]:row["k1"]]
        assert box.any()
