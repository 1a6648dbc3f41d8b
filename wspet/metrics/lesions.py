"""Lesion-wise detection counts: which true lesions a prediction finds and which predicted
components are false positives.

Lesions and predicted components are the connected components of the masks under
26-connectivity (voxels touching by a face, an edge or a corner belong together), which
keeps a lesion whose voxels meet only diagonally in one piece. A hit needs an overlap of
at least one voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from wspet.metrics.overlap import as_mask_pair

_TWENTY_SIX_CONNECTED = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class LesionCounts:
    """Per-case lesion detection counts.

    found: true lesions overlapped by the prediction; missed: true lesions not
    overlapped (found + missed == n_true); false_positive: predicted components that
    overlap no true lesion; n_true / n_pred: components in gt / pred.
    """

    found: int
    missed: int
    false_positive: int
    n_true: int
    n_pred: int


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected component labels of a 3-D boolean mask: `(labels, count)`, 0 = background."""
    labels, count = ndimage.label(mask, structure=_TWENTY_SIX_CONNECTED)
    return labels, int(count)


def lesion_detection(pred: Any, gt: Any) -> LesionCounts:
    """Count true lesions found and missed, and false-positive predicted components.

    `pred`, `gt`: 3-D (i, j, k) binary masks of one shape (nonzero = foreground).
    Empty gt: every predicted component is a false positive. Empty pred: every true
    lesion is missed.
    """
    p, g = as_mask_pair(pred, gt, ndim=3)
    gt_labels, n_true = label_components(g)
    pred_labels, n_pred = label_components(p)
    # A true lesion is found when any of its voxels is predicted, and a predicted
    # component is a hit when any of its voxels is a true lesion: the same overlap
    # relation read from either side.
    found = np.count_nonzero(np.unique(gt_labels[p]))
    hits = np.count_nonzero(np.unique(pred_labels[g]))
    return LesionCounts(
        found=int(found),
        missed=n_true - int(found),
        false_positive=n_pred - int(hits),
        n_true=n_true,
        n_pred=n_pred,
    )
