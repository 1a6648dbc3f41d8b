"""Filling a lesion mask's holes: a tumour's contour encloses its necrotic core.

A sarcoma or a large nodal mass often has a cold, necrotic centre inside a hot rim. A network that
reads the PET's intensity marks the rim and leaves the core out, while the tumour volume a clinician
draws (the GTV) holds it. This step adds every background region that the mask encloses, in 3-D or in
any axis-aligned plane: a core that opens at one end of the tumour is still ringed in the slices
through it. On solid lesions it changes nothing.

``fill_holes`` is the step of ``conf/postprocess`` (its signature: ``wspet/postprocess/__init__.py``);
``without_holes`` the same on a bare mask, for the pseudo-labels and the box prompts' classical lesions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from wspet.postprocess.morphology import check_step_inputs


def plane_structure(axis: int) -> np.ndarray:
    """The (3, 3, 3) boolean 4-connected cross of the plane normal to ``axis``: with it,
    ``ndimage.binary_fill_holes`` fills what each plane along ``axis`` encloses, plane by plane."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    middle = [slice(None)] * 3
    middle[axis] = 1
    structure[tuple(middle)] = ndimage.generate_binary_structure(2, 1)
    return structure


def fill_holes(mask: Any, image: Any, spacing: Sequence[float], in_planes: bool = True) -> np.ndarray:
    """The post-processing step: :func:`without_holes` of ``mask`` after checking the step's inputs.

    mask: binary (i, j, k) prediction. image: the PET on the same grid; not used by this step
    (shape-checked when given, may be None). spacing: voxel size in mm (checked, not used).
    """
    m, _, _ = check_step_inputs(mask, image, spacing)
    return without_holes(m, in_planes)


def without_holes(mask: np.ndarray, in_planes: bool = True) -> np.ndarray:
    """The boolean (i, j, k) ``mask`` with every hole it encloses filled.

    in_planes: also fill what the mask encloses in any plane normal to i, j or k, not only in 3-D.
    Returns a new boolean (i, j, k) mask, a superset of ``mask`` that encloses no hole, so that a
    second pass changes nothing; the input is not modified. A region touching the volume's border
    is never a hole.
    """
    if not isinstance(in_planes, bool):
        raise ValueError(f"fill_holes in_planes must be true or false, got {in_planes!r}")
    m = np.asarray(mask, dtype=bool)
    filled = m.copy()
    if not m.any():
        return filled
    # Holes lie inside the mask's bounding box; one voxel more keeps the background around it joined
    # to the volume's border, so the fill inside the crop equals the fill of the whole volume.
    corners = np.argwhere(m)
    crop = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(corners.min(0), corners.max(0)))
    filled[crop] = _fill_until_stable(m[crop], in_planes)
    return filled


def _fill_until_stable(mask: np.ndarray, in_planes: bool) -> np.ndarray:
    structures = [None, *(plane_structure(axis) for axis in range(3))] if in_planes else [None]
    filled = mask
    while True:  # a plane's fill can close a hole in another plane; stop when nothing changes
        grown = filled.copy()
        for structure in structures:
            grown |= ndimage.binary_fill_holes(filled, structure=structure)
        if np.array_equal(grown, filled):
            return filled
        filled = grown
