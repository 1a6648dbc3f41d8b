"""Box-prompted prediction: keep only what the model predicts inside boxes a person drew at test time.

This is the semi-automatic use a clinician makes of the tool: draw a box around each lesion of
interest, and let the model delineate inside it. Everything the model predicts outside the boxes
(normal uptake of other organs, other lesions not asked about) is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wspet.data.boxes import boxes_to_mask
from wspet.metrics import as_mask


def restrict_to_boxes(mask: Any, boxes: Sequence[Sequence[int]]) -> np.ndarray:
    """The (i, j, k) boolean ``mask`` with every voxel outside the union of ``boxes`` cleared.

    ``boxes`` are half-open voxel boxes ``[i0, j0, k0, i1, j1, k1]`` on the mask's grid; a box
    sticking out of the volume is refused (``ValueError`` showing the box and the shape). No box
    gives an empty mask. The input is not modified.
    """
    m = as_mask(mask, "mask")
    if m.ndim != 3:
        raise ValueError(f"mask: expected a 3-D (i, j, k) array, got shape {m.shape}")
    return m & boxes_to_mask(boxes, m.shape).astype(bool)
