"""Bounding boxes: masks from boxes, boxes from label masks, and their overlap.

A box is ``[i0, j0, k0, i1, j1, k1]``: voxel indices of the array as nibabel
loads it, half-open (``i0 <= i < i1``), so its volume in voxels is
``(i1 - i0) * (j1 - j0) * (k1 - k0)``. Boxes of one volume may overlap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = list[int]

# scipy.ndimage structuring-element rank for each 3D connectivity.
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(_is_int(n) and n > 0 for n in shape):
        raise ValueError(f"shape {shape} is not 3 positive ints")
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


def _is_int(value: object) -> bool:
    # bool is an int subclass but never a valid coordinate.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_box(box: Sequence[int]) -> Box:
    """Return ``box`` as a list of 6 ints with start < stop on every axis."""
    values = list(box) if isinstance(box, (Sequence, np.ndarray)) else None
    if values is None or len(values) != 6 or not all(_is_int(v) for v in values):
        raise ValueError(f"box {box!r} is not 6 ints [i0, j0, k0, i1, j1, k1]")
    values = [int(v) for v in values]
    if any(values[a] >= values[a + 3] for a in range(3)):
        raise ValueError(f"box {values} has start >= stop on some axis (boxes are half-open)")
    return values


def box_region(box: Sequence[int]) -> tuple[slice, slice, slice]:
    """The (i, j, k) slices of a valid half-open box ``[i0, j0, k0, i1, j1, k1]``: ``array[box_region(box)]``."""
    b = _check_box(box)
    return slice(b[0], b[3]), slice(b[1], b[4]), slice(b[2], b[5])


def box_volume(box: Sequence[int]) -> int:
    """Number of voxels in a valid half-open box."""
    b = _check_box(box)
    return (b[3] - b[0]) * (b[4] - b[1]) * (b[5] - b[2])


def boxes_to_mask(boxes: Sequence[Sequence[int]], shape: Sequence[int]) -> np.ndarray:
    """Union of half-open boxes as a ``uint8`` mask of ``shape`` (I, J, K).

    Returns an all-zero mask for an empty list. Raises ``ValueError`` (showing
    the box and the shape) if a box is not 6 ints, has start >= stop, or does
    not lie entirely inside the volume; use :func:`clip_box` first to accept
    boxes that stick out.
    """
    shape = _check_shape(shape)
    mask = np.zeros(shape, dtype=np.uint8)
    for box in boxes:
        b = _check_box(box)
        if any(b[a] < 0 or b[a + 3] > shape[a] for a in range(3)):
            raise ValueError(f"box {b} lies outside the volume of shape {shape}")
        mask[box_region(b)] = 1
    return mask


def clip_box(box: Sequence[int], shape: Sequence[int]) -> tuple[Box, float]:
    """Clip a box to the volume; return ``(clipped_box, fraction_of_volume_kept)``.

    The fraction is the clipped box's voxel count over the original's (1.0 when
    the box lies inside). A box entirely outside comes back empty (start ==
    stop on at least one axis) with fraction 0.0; such a box is not valid for
    :func:`boxes_to_mask`. Raises ``ValueError`` for a malformed box.
    """
    shape = _check_shape(shape)
    b = _check_box(box)
    start = [min(max(b[a], 0), shape[a]) for a in range(3)]
    stop = [max(min(b[a + 3], shape[a]), start[a]) for a in range(3)]
    kept = math.prod(stop[a] - start[a] for a in range(3))
    return start + stop, kept / box_volume(b)


def _per_axis(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(value) if isinstance(value, (Sequence, np.ndarray)) else (value,) * 3
    if len(values) != 3:
        raise ValueError(f"{name} {value!r} is not a number or 3 numbers")
    return values  # type: ignore[return-value]


def _check_growth(
    scale: float | Sequence[float], margin_vox: int | Sequence[int]
) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    scales = _per_axis(scale, "scale")
    if not all(isinstance(s, (int, float, np.number)) and np.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"scale {scale!r} is not a positive number or 3 of them")
    margins = _per_axis(margin_vox, "margin_vox")
    if not all(_is_int(m) and m >= 0 for m in margins):
        raise ValueError(f"margin_vox {margin_vox!r} is not a non-negative int or 3 of them")
    return scales, tuple(int(m) for m in margins)  # type: ignore[return-value]


def boxes_from_label(
    label: np.ndarray,
    margin_vox: int | Sequence[int] = 0,
    scale: float | Sequence[float] = 1.0,
    connectivity: int = 26,
) -> list[Box]:
    """One box per connected component of ``label != 0`` (shape (I, J, K)).

    The rule, per component and per axis, with tight box ``[s, e)`` of extent
    ``n = e - s``:

    1. scale about the centre: new extent ``m = max(1, floor(n * scale + 0.5))``,
       ``start = s - floor((m - n) / 2)``, ``stop = start + m`` (an odd extra
       voxel goes to the stop side; scale < 1 shrinks the same way);
    2. grow by ``margin_vox`` voxels on each side (``margin_vox`` is an int or
       one int per axis, >= 0);
    3. clip to ``[0, shape)``.

    Components are ordered as ``scipy.ndimage.label`` numbers them (first voxel
    in C order). ``connectivity`` is 6, 18 or 26 (full 3D). Returns ``[]`` for
    an empty label.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label shape {label.shape} is not 3D")
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity {connectivity!r} is not one of 6, 18, 26")
    scales, margins = _check_growth(scale, margin_vox)
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    components, _ = ndimage.label(label != 0, structure=structure)
    boxes = []
    for slices in ndimage.find_objects(components):
        tight = [sl.start for sl in slices] + [sl.stop for sl in slices]
        boxes.append(grow_box(tight, label.shape, scale=scales, margin_vox=margins))
    return boxes


def grow_box(
    box: Sequence[int],
    shape: Sequence[int],
    scale: float | Sequence[float] = 1.0,
    margin_vox: int | Sequence[int] = 0,
) -> Box:
    """Scale a box about its centre, add a margin, clip to ``shape``.

    Per axis, with ``[s, e)`` of extent ``n = e - s``: new extent
    ``m = max(1, floor(n * scale + 0.5))``, ``start = s - floor((m - n) / 2)``,
    ``stop = start + m`` (an odd extra voxel goes to the stop side; scale < 1
    shrinks the same way), then ``margin_vox`` more voxels on each side, then
    clipped to ``[0, shape)``. The result is never empty if the clipped box
    overlaps the volume; a box wholly outside comes back empty.
    """
    shape = _check_shape(shape)
    b = _check_box(box)
    scales, margins = _check_growth(scale, margin_vox)
    start, stop = [], []
    for a in range(3):
        n = b[a + 3] - b[a]
        m = max(1, math.floor(n * scales[a] + 0.5))
        lo = b[a] - (m - n) // 2 - margins[a]
        start.append(min(max(lo, 0), shape[a]))
        stop.append(max(min(lo + m + 2 * margins[a], shape[a]), start[a]))
    return start + stop


def box_dice(boxes: Sequence[Sequence[int]], label: np.ndarray) -> float:
    """Dice between the union mask of ``boxes`` and ``label != 0`` (shape (I, J, K)).

    Returns 1.0 when both are empty (nothing to find, nothing boxed).
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label shape {label.shape} is not 3D")
    boxed = boxes_to_mask(boxes, label.shape).astype(bool)
    truth = label != 0
    total = int(boxed.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(boxed & truth)) / total
