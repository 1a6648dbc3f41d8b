from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from wspet.metrics import LesionCounts, case_metrics, lesion_detection


def two_lesion_case():
    """gt: lesions L1 and L2; pred: one blob over part of L1 and one far from both."""
    gt = np.zeros((16, 16, 16), dtype=bool)
    gt[2:6, 2:6, 2:6] = True  # L1
    gt[10:14, 10:14, 2:6] = True  # L2
    pred = np.zeros_like(gt)
    pred[4:7, 4:7, 4:7] = True  # hits L1 (and spills out of it)
    pred[2:4, 12:14, 12:14] = True  # false positive
    return pred, gt


def test_one_found_one_missed_one_false_positive():
    pred, gt = two_lesion_case()
    assert lesion_detection(pred, gt) == LesionCounts(
        found=1, missed=1, false_positive=1, n_true=2, n_pred=2
    )


def test_counts_are_frozen():
    counts = lesion_detection(*two_lesion_case())
    with pytest.raises(dataclasses.FrozenInstanceError):
        counts.found = 3  # type: ignore[misc]


def test_corner_contact_is_one_component():
    # Two voxels meeting only at a corner are one lesion under 26-connectivity.
    gt = np.zeros((4, 4, 4), dtype=bool)
    gt[1, 1, 1] = gt[2, 2, 2] = True
    pred = np.zeros_like(gt)
    pred[2, 2, 2] = True
    assert lesion_detection(pred, gt) == LesionCounts(1, 0, 0, n_true=1, n_pred=1)


def test_one_prediction_spanning_two_lesions_finds_both():
    gt = np.zeros((10, 4, 4), dtype=bool)
    gt[1:3, 1:3, 1:3] = gt[6:8, 1:3, 1:3] = True
    pred = np.zeros_like(gt)
    pred[2:7, 2, 2] = True
    assert lesion_detection(pred, gt) == LesionCounts(2, 0, 0, n_true=2, n_pred=1)


def test_empty_prediction_and_empty_gt():
    _, gt = two_lesion_case()
    empty = np.zeros_like(gt)
    assert lesion_detection(empty, gt) == LesionCounts(0, 2, 0, n_true=2, n_pred=0)
    assert lesion_detection(gt, empty) == LesionCounts(0, 0, 2, n_true=0, n_pred=2)


def test_case_metrics_values():
    pred, gt = two_lesion_case()
    m = case_metrics(pred, gt, (3.5, 3.5, 3.1))
    assert set(m) == {
        "dice",
        "ude_mm",
        "hd95_mm",
        "lesions_found",
        "lesions_missed",
        "lesions_false",
        "pred_empty",
    }
    # overlap 2x2x2 = 8; |pred| = 27 + 8, |gt| = 64 + 64
    assert m["dice"] == pytest.approx(16 / (35 + 128))
    assert (m["lesions_found"], m["lesions_missed"], m["lesions_false"]) == (1.0, 1.0, 1.0)
    assert m["pred_empty"] == 0.0
    assert m["ude_mm"] > 0 and m["hd95_mm"] >= 0
    assert all(isinstance(v, float) for v in m.values())


def test_case_metrics_keeps_an_empty_prediction():
    _, gt = two_lesion_case()
    m = case_metrics(np.zeros_like(gt), gt, (1, 1, 1))
    assert m["pred_empty"] == 1.0
    assert m["dice"] == 0.0
    assert math.isnan(m["ude_mm"]) and math.isnan(m["hd95_mm"])
    assert m["lesions_missed"] == 2.0


def test_case_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match=r"pred shape \(4, 4, 4\) != gt shape \(4, 4, 3\)"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1))
