"""Voxel overlap between a predicted and a true binary mask (Dice), and the input checks
shared by every metric.

Masks are arrays in (i, j, k) voxel order as nibabel loads them; torch tensors are accepted
and converted. Foreground is every nonzero voxel, so integer label maps (one id per lesion)
work as they are; float arrays must hold only 0 and 1, because a float array with other
values is almost always an unthresholded probability map, and calling every nonzero
probability foreground would be a silent wrong result.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_mask(x: Any, name: str) -> np.ndarray:
    """Return `x` as a boolean NumPy array (nonzero = foreground).

    `x` may be a NumPy array, a torch tensor (any device) or a nested sequence. Raises
    ValueError, naming `name`, for float input with values other than 0 and 1 (threshold
    probabilities first) and for non-numeric input.
    """
    if hasattr(x, "detach"):  # a torch tensor; no torch import needed for NumPy callers
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all((arr == 0) | (arr == 1)):
            bad = arr[(arr != 0) & (arr != 1)].flat[0]
            raise ValueError(
                f"{name}: float mask must hold only 0 and 1 (threshold probabilities first), "
                f"found {bad!r}"
            )
        return arr != 0
    raise ValueError(f"{name}: expected a numeric or boolean mask, got dtype {arr.dtype}")


def as_mask_pair(
    pred: Any, gt: Any, ndim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Convert `pred` and `gt` with `as_mask` and check they share one shape.

    With `ndim` given, both must also have exactly that many dimensions.
    Raises ValueError naming both shapes.
    """
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} != gt shape {g.shape}")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"pred/gt: expected {ndim}-D (i, j, k) masks, got shape {p.shape}")
    return p, g


def dice_score(pred: Any, gt: Any) -> float:
    """Dice similarity `2|A and B| / (|A| + |B|)` of two binary masks of any equal shape.

    Returns a float in [0, 1]: 1.0 when both masks are empty (nothing to find, nothing
    found: a perfect answer), 0.0 when exactly one is empty.
    """
    p, g = as_mask_pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total
