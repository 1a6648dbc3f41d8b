from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wspet.metrics import hausdorff_distance_95, mean_surface_distance
from wspet.metrics.surface import surface_distance_summary, surface_voxels


def brute_force(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """(ASSD, HD95) by the definition, with no distance transform: surfaces from an
    explicit 6-neighbour test on a zero-padded copy, then all pairwise distances."""

    def surface_points(m):
        padded = np.pad(m, 1, constant_values=False)
        core = padded[1:-1, 1:-1, 1:-1]
        inner = np.ones_like(m)
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(core & ~inner) * np.asarray(spacing, dtype=float)

    pa, pb = surface_points(a), surface_points(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    assd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return float(assd), float(hd95)


def plane(shape, i, j0, j1, k0, k1):
    m = np.zeros(shape, dtype=bool)
    m[i, j0:j1, k0:k1] = True
    return m


def ellipsoid_ball(shape, centre, radius_mm, spacing):
    grid = np.indices(shape).astype(float)
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


@pytest.mark.parametrize("k", [1, 2, 3])
def test_parallel_plates_shifted_by_k_voxels(k):
    # One-voxel-thick plates: every voxel is a surface voxel and its nearest surface
    # voxel of the other plate is straight across, k voxels of 2 mm away.
    spacing = (2.0, 1.0, 1.5)
    a = plane((10, 8, 8), 2, 2, 6, 2, 6)
    b = plane((10, 8, 8), 2 + k, 2, 6, 2, 6)
    assert mean_surface_distance(a, b, spacing) == pytest.approx(2.0 * k)
    assert hausdorff_distance_95(a, b, spacing) == pytest.approx(2.0 * k)


def test_plate_against_wider_plate_by_hand():
    # a: 4x4 plate at i=2; b: 6x6 plate at i=5 whose centre 4x4 lies over a.
    # a -> b: 16 distances of 3 voxels = 6 mm.
    # b -> a: 16 of 6 mm (over a), 16 edge voxels one voxel off sideways: sqrt(36 + 1),
    #         4 corners one voxel off in j and k: sqrt(36 + 1 + 1).
    spacing = (2.0, 1.0, 1.0)
    a = plane((10, 10, 10), 2, 3, 7, 3, 7)
    b = plane((10, 10, 10), 5, 2, 8, 2, 8)
    total = 16 * 6 + 16 * 6 + 16 * math.sqrt(37) + 4 * math.sqrt(38)
    assert mean_surface_distance(a, b, spacing) == pytest.approx(total / 52)
    # Sorted b -> a has sqrt(38) at indices 32..35; the 95th percentile sits at 33.25.
    assert hausdorff_distance_95(a, b, spacing) == pytest.approx(math.sqrt(38))
    assert hausdorff_distance_95(b, a, spacing) == pytest.approx(math.sqrt(38))


def test_cube_against_itself_and_surface_count():
    a = np.zeros((8, 8, 8), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    assert surface_voxels(a).sum() == 4**3 - 2**3
    assert mean_surface_distance(a, a, (1, 1, 1)) == 0.0
    assert hausdorff_distance_95(a, a, (1, 1, 1)) == 0.0


def test_volume_border_counts_as_outside():
    # A full slab touching every side: all voxels touch the border, so all are surface.
    a = np.ones((3, 3, 3), dtype=bool)
    assert surface_voxels(a).sum() == 27 - 1


def test_sphere_against_shifted_sphere_anisotropic():
    spacing = (1.5, 1.0, 2.0)
    shape = (20, 24, 14)
    a = ellipsoid_ball(shape, (9, 11, 6), 7.0, spacing)
    b = ellipsoid_ball(shape, (11, 12, 7), 6.0, spacing)
    assd, hd95 = brute_force(a, b, spacing)
    assert assd > 1.0  # the case is not trivially zero
    assert mean_surface_distance(a, b, spacing) == pytest.approx(assd, rel=1e-9)
    assert hausdorff_distance_95(a, b, spacing) == pytest.approx(hd95, rel=1e-9)


small = arrays(dtype=bool, shape=(6, 7, 5))


@settings(max_examples=50, deadline=None)
@given(
    a=small,
    b=small,
    spacing=st.tuples(*[st.floats(0.5, 4.0) for _ in range(3)]),
)
def test_matches_brute_force_on_random_masks(a, b, spacing):
    assume(a.any() and b.any())
    assd, hd95 = brute_force(a, b, spacing)
    got = surface_distance_summary(a, b, spacing)
    assert got[0] == pytest.approx(assd, rel=1e-9, abs=1e-12)
    assert got[1] == pytest.approx(hd95, rel=1e-9, abs=1e-12)
    # symmetric by definition
    assert mean_surface_distance(b, a, spacing) == pytest.approx(got[0], rel=1e-9, abs=1e-12)


def test_empty_masks():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = np.zeros((5, 5, 5), dtype=bool)
    full[1:3, 1:3, 1:3] = True
    assert mean_surface_distance(empty, empty, (1, 1, 1)) == 0.0
    assert hausdorff_distance_95(empty, empty, (1, 1, 1)) == 0.0
    assert math.isnan(mean_surface_distance(full, empty, (1, 1, 1)))
    assert math.isnan(hausdorff_distance_95(empty, full, (1, 1, 1)))


def test_torch_input():
    a = torch.from_numpy(plane((6, 4, 4), 1, 0, 4, 0, 4))
    b = torch.from_numpy(plane((6, 4, 4), 4, 0, 4, 0, 4))
    assert mean_surface_distance(a, b, torch.tensor([1.0, 1.0, 1.0])) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), "abc", (1, 1, float("nan"))]
)
def test_bad_spacing(spacing):
    m = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="spacing: expected 3 positive numbers"):
        mean_surface_distance(m, m, spacing)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"pred shape \(3, 3, 3\) != gt shape \(3, 3, 4\)"):
        hausdorff_distance_95(np.ones((3, 3, 3)), np.ones((3, 3, 4)), (1, 1, 1))
    with pytest.raises(ValueError, match=r"expected 3-D .* got shape \(3, 3\)"):
        hausdorff_distance_95(np.ones((3, 3)), np.ones((3, 3)), (1, 1, 1))
