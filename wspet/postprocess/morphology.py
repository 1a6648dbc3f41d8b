"""The paper's "+M" post-processing: a morphological opening that separates touching
lesions and removes specks, then removal of connected components below a volume.

Every post-processing step has the signature `fn(mask, image, spacing, **params)`:
`mask` a binary (i, j, k) array, `image` the PET in SUV on the same grid, `spacing` the
voxel size in mm; it returns a new boolean (i, j, k) array and never modifies its inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wspet.metrics import as_mask, check_spacing
from wspet.metrics.lesions import label_components


def check_step_inputs(
    mask: Any, image: Any, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Validate the common arguments of a post-processing step.

    Returns `(mask as a 3-D bool array, image as a float array or None, spacing)`.
    Raises ValueError for a mask that is not 3-D, an image of another shape, or a bad
    spacing.
    """
    m = as_mask(mask, "mask")
    if m.ndim != 3:
        raise ValueError(f"mask: expected a 3-D (i, j, k) array, got shape {m.shape}")
    img = None
    if image is not None:
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        img = np.asarray(image, dtype=float)
        if img.shape != m.shape:
            raise ValueError(f"image shape {img.shape} != mask shape {m.shape}")
    return m, img, check_spacing(spacing)


def ellipsoid_structure(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean structuring element of a ball of `radius_mm` on a grid of `spacing` (mm).

    In voxels it is an ellipsoid with semi-axes `radius_mm / spacing`: the voxels whose
    centre lies within `radius_mm` of the central voxel's centre. Shape (2a+1, 2b+1, 2c+1)
    with a = floor(radius_mm / spacing[0]) etc.; radius 0 (or below one voxel) gives the
    single central voxel, i.e. no morphological effect.
    """
    if not np.isfinite(radius_mm) or radius_mm < 0:
        raise ValueError(f"radius_mm: expected a number >= 0, got {radius_mm!r}")
    sx, sy, sz = check_spacing(spacing)
    half = [int(np.floor(radius_mm / s + 1e-9)) for s in (sx, sy, sz)]
    ii, jj, kk = np.ogrid[
        -half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1
    ]
    # The small tolerance keeps offsets lying exactly on the sphere (e.g. one voxel at
    # radius = spacing) inside despite rounding.
    dist2 = (ii * sx) ** 2 + (jj * sy) ** 2 + (kk * sz) ** 2
    return dist2 <= radius_mm**2 * (1 + 1e-9)


def remove_small_components(
    mask: np.ndarray, spacing: Sequence[float], min_volume_ml: float
) -> np.ndarray:
    """Copy of the boolean `mask` without its 26-connected components under `min_volume_ml`.

    Volume = voxel count x voxel volume (1 ml = 1000 mm^3). `min_volume_ml = 0` keeps all.
    """
    if not np.isfinite(min_volume_ml) or min_volume_ml < 0:
        raise ValueError(f"min_volume_ml: expected a number >= 0, got {min_volume_ml!r}")
    labels, count = label_components(mask)
    if count == 0:
        return mask.copy()
    voxel_ml = float(np.prod(check_spacing(spacing))) / 1000.0
    volumes_ml = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
    keep = volumes_ml >= min_volume_ml
    keep[0] = False  # background
    return keep[labels]


def open_and_filter(
    mask: Any,
    image: Any,
    spacing: Sequence[float],
    radius_mm: float = 3.5,
    min_volume_ml: float = 0.5,
) -> np.ndarray:
    """Opening with a ball of `radius_mm`, then removal of components under `min_volume_ml`.

    mask: binary (i, j, k) prediction. image: the PET on the same grid; not used by this
    step (shape-checked when given, may be None). spacing: voxel size in mm.
    Returns a new boolean (i, j, k) mask, a subset of `mask`; empty in, empty out.

    The erosion treats the outside of the volume as foreground so a lesion cut by the
    volume border is not eaten from that side; the result is still inside `mask`.
    Defaults suit 3.5 x 3.5 x 3.1 mm voxels (see docs/metrics.md): radius 3.5 mm is the
    6-connected cross of one voxel, which cuts one-voxel-thin bridges and removes any
    component that holds no 3 x 3 x 3 cross; 0.5 ml (~13 voxels) is half the smallest
    lesion volume reported for the paper's data set (1 ml).
    """
    m, _, sampling = check_step_inputs(mask, image, spacing)
    structure = ellipsoid_structure(radius_mm, sampling)
    eroded = ndimage.binary_erosion(m, structure=structure, border_value=1)
    opened = ndimage.binary_dilation(eroded, structure=structure) & m
    return remove_small_components(opened, sampling, min_volume_ml)
