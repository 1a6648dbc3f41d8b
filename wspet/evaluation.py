"""Evaluate a trained model on a dataset split: masks, per-case metrics, and their means."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from wspet.data.format import CaseEntry, load_image, load_label
from wspet.inference import PostProcess, predict_mask, save_mask
from wspet.io import atomic_path, write_csv
from wspet.metrics import case_metrics
from wspet.module import LesionSegmenter
from wspet.overlays import overlay_figure

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "dice", "ude_mm", "hd95_mm", "lesions_found", "lesions_missed", "lesions_false", "pred_empty",
)


def evaluate_cases(
    model: LesionSegmenter,
    cases: Sequence[CaseEntry],
    out_dir: str | Path,
    postprocess: PostProcess | None = None,
    window: Sequence[int] = (96, 96, 64),
    overlap: Sequence[int] = (32, 32, 16),
    threshold: float = 0.5,
) -> list[dict]:
    """Predict every case, write ``out_dir/predictions/<case>_mask.nii.gz`` and ``test_metrics.csv``.

    Returns one row per case (``case`` and :data:`METRIC_COLUMNS`); cases without a label get
    a mask but no metrics. Masks keep each input's affine and header.
    """
    out_dir = Path(out_dir)
    rows = []
    for case in cases:
        image = load_image(case.image)
        mask = predict_mask(model, image, postprocess, window, overlap, threshold)
        save_mask(mask, image, out_dir / "predictions" / f"{case.name}_mask.nii.gz")
        if case.label is None:
            continue
        label = load_label(case.label, image)
        rows.append({"case": case.name, **case_metrics(mask, label, image.spacing)})
        log.info("%s: Dice %.3f", case.name, rows[-1]["dice"])
    if rows:
        write_csv(out_dir / "test_metrics.csv", rows, ["case", *METRIC_COLUMNS])
        write_overlays(out_dir, cases, rows)
    return rows


def write_overlays(out_dir: Path, cases: Sequence[CaseEntry], rows: Sequence[dict]) -> Path:
    """``out_dir/overlays.png``: the best and the worst test case by Dice, as in Figure 2."""
    by_name = {case.name: case for case in cases}
    chosen = {"best": max(rows, key=lambda r: r["dice"]), "worst": min(rows, key=lambda r: r["dice"])}
    panels = []
    for kind, row in chosen.items():
        case = by_name[row["case"]]
        image = load_image(case.image)
        mask = np.asarray(nib.load(str(out_dir / "predictions" / f"{case.name}_mask.nii.gz")).dataobj) > 0
        panels.append({
            "image": image.array, "pred": mask, "truth": load_label(case.label, image) > 0,
            "spacing": image.spacing, "affine": image.affine,
            "title": f"{kind}: {case.name}, Dice {row['dice']:.2f}",
        })
    figure = overlay_figure(panels, "prediction (green) and ground truth (purple)")
    path = out_dir / "overlays.png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def mean_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each metric over cases; distances over the cases where they are defined.

    ``n_cases`` and ``n_pred_empty`` say how many cases there were and how many had an empty
    prediction (their distances are NaN and left out of the distance means, never hidden).
    """
    summary: dict[str, float] = {"n_cases": len(rows)}
    for column in METRIC_COLUMNS:
        values = [r[column] for r in rows if not math.isnan(r[column])]
        summary[column] = float(np.mean(values)) if values else math.nan
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
