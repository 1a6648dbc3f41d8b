"""Surface distances between two binary masks, in mm: the paper's unsigned distance error
(UDE, computed as the average symmetric surface distance) and the 95th-percentile
Hausdorff distance.

Definitions (see docs/metrics.md):
- surface voxels of a mask: its voxels with at least one 6-connected neighbour outside the
  mask, where the volume's border counts as outside;
- d(A -> B): for each surface voxel of A, the Euclidean distance in mm (voxel spacing
  applied) from its centre to the nearest surface-voxel centre of B.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wspet.metrics.overlap import as_mask_pair

_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def check_spacing(spacing: Any) -> tuple[float, float, float]:
    """Return `spacing` as three positive finite floats (mm), or raise ValueError."""
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected 3 positive numbers (mm), got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing: expected 3 positive numbers (mm), got {spacing!r}")
    return values  # type: ignore[return-value]


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean (i, j, k) array of the surface voxels of the 3-D boolean `mask`.

    `border_value=0` makes voxels on the volume border surface voxels.
    """
    interior = ndimage.binary_erosion(mask, structure=_SIX_CONNECTED, border_value=0)
    return mask & ~interior


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of `a | b` (both non-empty)."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other = tuple(x for x in range(union.ndim) if x != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(hits[0], hits[-1] + 1))
    return tuple(box)


def directed_surface_distances(
    pred: Any, gt: Any, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The two directed sets of surface distances, in mm.

    Returns `(d_pred_to_gt, d_gt_to_pred)`, 1-D float arrays with one entry per surface
    voxel of `pred` and of `gt` respectively, or None when either mask is empty (the
    distances are undefined). Raises ValueError for masks that are not 3-D and of one
    shape, and for a bad spacing.
    """
    p, g = as_mask_pair(pred, gt, ndim=3)
    sampling = check_spacing(spacing)
    if not p.any() or not g.any():
        return None
    # Surfaces first, on the full grid, so the volume border is the true border; then
    # crop to the union's box, which holds both surfaces and hence every nearest pair.
    box = _union_box(p, g)
    sp, sg = surface_voxels(p)[box], surface_voxels(g)[box]
    to_gt = ndimage.distance_transform_edt(~sg, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return to_gt[sp], to_pred[sg]


def surface_distance_summary(
    pred: Any, gt: Any, spacing: Sequence[float]
) -> tuple[float, float]:
    """`(mean_surface_distance, hausdorff_distance_95)` in mm from one distance computation.

    Both are 0.0 when both masks are empty and NaN when exactly one is.
    """
    distances = directed_surface_distances(pred, gt, spacing)
    if distances is None:
        # Both empty: nothing to delineate and nothing delineated, a perfect answer.
        # One empty: no surface to measure to, so the distance is undefined.
        p, g = as_mask_pair(pred, gt, ndim=3)
        value = 0.0 if not p.any() and not g.any() else float("nan")
        return value, value
    d_pg, d_gp = distances
    assd = (d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return float(assd), float(hd95)


def mean_surface_distance(pred: Any, gt: Any, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (the paper's UDE).

    The mean of d(pred -> gt) and d(gt -> pred) pooled together, i.e.
    `(sum d_pg + sum d_gp) / (n_pred_surface + n_gt_surface)`.
    `pred`, `gt`: 3-D (i, j, k) masks of one shape; `spacing`: voxel size in mm.
    Returns 0.0 when both masks are empty and NaN when exactly one is (callers count
    those cases; see `wspet.metrics.case_metrics`).
    """
    return surface_distance_summary(pred, gt, spacing)[0]


def hausdorff_distance_95(pred: Any, gt: Any, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm.

    The larger of the 95th percentiles of d(pred -> gt) and of d(gt -> pred), each with
    NumPy's default (linear interpolation) percentile. Returns 0.0 when both masks are
    empty and NaN when exactly one is.
    """
    return surface_distance_summary(pred, gt, spacing)[1]
