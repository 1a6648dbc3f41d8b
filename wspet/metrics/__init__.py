"""Evaluation metrics on binary (i, j, k) masks with the voxel spacing in mm.

Plain functions on NumPy arrays (torch tensors are converted); see docs/metrics.md for
definitions, units and what each returns on empty masks.
"""

from __future__ import annotations

from typing import Any, Sequence

from wspet.metrics.lesions import LesionCounts, lesion_detection
from wspet.metrics.overlap import as_mask, as_mask_pair, dice_score
from wspet.metrics.surface import (
    check_spacing,
    hausdorff_distance_95,
    mean_surface_distance,
    surface_distance_summary,
)

__all__ = [
    "LesionCounts",
    "as_mask",
    "as_mask_pair",
    "case_metrics",
    "check_spacing",
    "dice_score",
    "hausdorff_distance_95",
    "lesion_detection",
    "mean_surface_distance",
    "surface_distance_summary",
]


def case_metrics(pred: Any, gt: Any, spacing: Sequence[float]) -> dict[str, float]:
    """Every metric of one case in one call.

    Returns floats under the keys dice, ude_mm, hd95_mm, lesions_found, lesions_missed,
    lesions_false and pred_empty. A failed case is kept, not dropped: an empty
    prediction gives pred_empty 1.0 (else 0.0), and then ude_mm and hd95_mm are NaN
    unless gt is empty too (both 0.0).
    """
    p, g = as_mask_pair(pred, gt, ndim=3)
    spacing = check_spacing(spacing)
    lesions = lesion_detection(p, g)
    ude, hd95 = surface_distance_summary(p, g, spacing)
    return {
        "dice": dice_score(p, g),
        "ude_mm": ude,
        "hd95_mm": hd95,
        "lesions_found": float(lesions.found),
        "lesions_missed": float(lesions.missed),
        "lesions_false": float(lesions.false_positive),
        "pred_empty": 0.0 if p.any() else 1.0,
    }
