"""The evaluation's metrics of one case, their names, and their summary over cases.

:data:`METRIC_NAMES` is the one list of what a case is scored by: every per-case table
(``test_metrics.csv``, ``metrics.csv``, the report's ``results.csv``) has these columns, in this order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from wspet.metrics.lesions import lesion_detection
from wspet.metrics.overlap import as_mask_pair, dice_score
from wspet.metrics.surface import check_spacing, surface_distance_summary

METRIC_NAMES = ("dice", "ude_mm", "hd95_mm", "lesions_found", "lesions_missed", "lesions_false", "pred_empty")


def case_metrics(pred: Any, gt: Any, spacing: Sequence[float]) -> dict[str, float]:
    """Every metric of one case in one call: floats under :data:`METRIC_NAMES`.

    A failed case is kept, not dropped: an empty prediction gives pred_empty 1.0 (else 0.0),
    and then ude_mm and hd95_mm are NaN unless gt is empty too (both 0.0).
    """
    p, g = as_mask_pair(pred, gt, ndim=3)
    spacing = check_spacing(spacing)
    lesions = lesion_detection(p, g)
    ude, hd95 = surface_distance_summary(p, g, spacing)
    values = (
        dice_score(p, g), ude, hd95, float(lesions.found), float(lesions.missed), float(lesions.false_positive),
        0.0 if p.any() else 1.0,
    )
    return dict(zip(METRIC_NAMES, values, strict=True))


def mean_std(values: Sequence[float] | np.ndarray, ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation (``ddof`` 1: the sample's, 0: the population's) of ``values``.

    NaN for no values, and a NaN deviation where ``ddof`` leaves no degree of freedom.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    std = float(np.std(values, ddof=ddof)) if values.size > ddof else math.nan
    return float(np.mean(values)), std


def mean_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each metric over cases; distances over the cases where they are defined.

    ``n_cases`` and ``n_pred_empty`` say how many cases there were and how many had an empty
    prediction (their distances are NaN and left out of the distance means, never hidden).
    """
    summary: dict[str, float] = {"n_cases": len(rows)}
    for name in METRIC_NAMES:
        summary[name] = mean_std([r[name] for r in rows if not math.isnan(r[name])])[0]
    summary["n_pred_empty"] = int(sum(r["pred_empty"] for r in rows))
    return summary


def format_table(rows: Sequence[dict], title: str) -> str:
    """A plain-text table of per-case Dice and UDE with the mean, for the terminal."""
    lines = [title, f"{'case':<16}{'Dice':>8}{'UDE mm':>10}"]
    lines += [f"{r['case']:<16}{r['dice']:>8.3f}{r['ude_mm']:>10.2f}" for r in rows]
    summary = mean_metrics(rows)
    lines.append(f"{'mean':<16}{summary['dice']:>8.3f}{summary['ude_mm']:>10.2f}")
    if summary["n_pred_empty"]:
        lines.append(f"({summary['n_pred_empty']} of {len(rows)} cases had an empty prediction)")
    return "\n".join(lines)
