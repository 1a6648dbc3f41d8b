"""Box-prompted prediction: keep only what the model predicts inside boxes a person drew at test time.

This is the semi-automatic use a clinician makes of the tool: draw a box around each lesion of
interest, and let the model delineate inside it. Everything the model predicts outside the boxes
(normal uptake of other organs, other lesions not asked about) is dropped.

A prompt box says that a lesion is there. Where the model predicts nothing at all inside one, an
empty answer is certainly wrong, so :func:`fill_empty_boxes` segments that box with a classical
method instead (by default Otsu's threshold of the box, as the pseudo-labels are made), and says
which boxes it filled. Otsu, not the clinical 41% of SUVmax, because it found the box's lesion better
on every set measured: both phantom generators and the real sarcoma scans (docs/prediction.md).

By default every box, not only an empty one, gets that classical lesion joined to the model's mask
(:data:`DEFAULT_UNION`): the models under-segment inside a box, and the union scored higher than the
model's mask alone with every model measured (docs/prediction.md).

That classical lesion is a tumour's, so the holes it encloses, a cold necrotic core inside a hot rim,
are part of it (:data:`DEFAULT_FILL_HOLES`; :mod:`wspet.postprocess.holes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wspet.data.boxes import box_region, boxes_to_mask
from wspet.data.pseudo_labels import METHODS, box_lesion
from wspet.metrics import as_mask
from wspet.postprocess.holes import without_holes

# How a prompt box that the model left empty is segmented: a method of wspet.data.pseudo_labels.
DEFAULT_FALLBACK = "otsu"
FALLBACKS = (*METHODS, "none")
# Join every box's classical lesion to the model's mask: 0.875-0.876 against 0.830-0.859 on the
# phantoms' test boxes with five weakly supervised models, never lower by more than 0.002 on a case,
# and 0.661 -> 0.762 on the real scans (docs/prediction.md).
DEFAULT_UNION = True
# Fill the holes of each box's classical lesion: with Otsu alone in the tight test boxes 0.883 -> 0.886 on
# the phantoms and 0.713 -> 0.748 on the real scans, no case lower; joined to two models' masks on the
# real scans +0.015 and +0.020 (docs/prediction.md).
DEFAULT_FILL_HOLES = True


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


def check_fallback(method: str) -> str:
    """``method`` if it is one of :data:`FALLBACKS`; ValueError naming the value otherwise."""
    if method not in FALLBACKS:
        raise ValueError(f"box_fallback={method!r} is not one of {list(FALLBACKS)}")
    return method


def fill_empty_boxes(
    mask: Any, image: Any, boxes: Sequence[Sequence[int]], method: str = DEFAULT_FALLBACK, fraction: float = 0.41,
    union: bool = DEFAULT_UNION,
    fill_holes: bool = DEFAULT_FILL_HOLES,
) -> tuple[np.ndarray, list[int]]:
    """``mask`` (I, J, K) kept inside ``boxes``, each box the model left empty segmented by ``method``.

    ``image`` (I, J, K) is the scan in SUV (or any unit proportional to it). ``method`` is a
    pseudo-label method (``fraction`` of the box's maximum, ``otsu``, ``chan_vese``;
    :func:`wspet.data.pseudo_labels.box_lesion`, keeping the component most present in the box's
    middle: a prompt box is drawn around its lesion, and that rule found it best; docs/prediction.md)
    or ``none`` (leave the box empty, and add nothing anywhere). With ``union`` (the default), every box
    gets ``method``'s lesion added to the model's, not only a box the model left empty; without it a box
    the model found something in keeps the model's answer alone (``predict.py box_union``; docs/prediction.md).
    With ``fill_holes`` (the default) the holes ``method``'s lesion encloses are part of it
    (:func:`wspet.postprocess.holes.without_holes`); the model's own mask is filled by ``postprocess=fill_holes``.
    Returns the new mask and the indices of the boxes the model left empty (and that were filled).
    Boxes are checked as in :func:`restrict_to_boxes`; the inputs are not modified.
    """
    check_fallback(method)
    kept = restrict_to_boxes(mask, boxes)
    img = np.asarray(image, dtype=np.float32)
    if img.shape != kept.shape:
        raise ValueError(f"image shape {img.shape} != mask shape {kept.shape}")
    filled = []
    if method == "none":
        return kept, filled
    predicted = kept.copy()  # a box overlapping a filled one is judged on the model's voxels alone
    for index, box in enumerate(boxes):
        region = box_region(box)
        empty = not predicted[region].any()
        if empty or union:
            lesion = box_lesion(img[region], method, fraction, component="central")[0]
            kept[region] |= without_holes(lesion) if fill_holes else lesion
        if empty:
            filled.append(index)
    return kept, filled
