"""Evaluation metrics on binary (i, j, k) masks with the voxel spacing in mm.

Plain functions on NumPy arrays (torch tensors are converted); see docs/metrics.md for
definitions, units and what each returns on empty masks.
"""

from __future__ import annotations

from wspet.metrics.lesions import LesionCounts, lesion_detection
from wspet.metrics.overlap import as_mask, as_mask_pair, dice_score
from wspet.metrics.summary import METRIC_NAMES, case_metrics, mean_metrics, mean_std
from wspet.metrics.surface import (
    check_spacing,
    hausdorff_distance_95,
    mean_surface_distance,
    surface_distance_summary,
)

__all__ = [
    "METRIC_NAMES",
    "LesionCounts",
    "as_mask",
    "as_mask_pair",
    "case_metrics",
    "check_spacing",
    "dice_score",
    "hausdorff_distance_95",
    "lesion_detection",
    "mean_metrics",
    "mean_std",
    "mean_surface_distance",
    "surface_distance_summary",
]
