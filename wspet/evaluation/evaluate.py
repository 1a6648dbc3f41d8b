"""Evaluate a trained model on a dataset split: masks, per-case metrics, and their means."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from wspet.data.format import CaseEntry, load_image, load_label
from wspet.inference.sliding_window import DEFAULT_OVERLAP, DEFAULT_WINDOW, PostProcess, predict_mask
from wspet.io import atomic_path, save_nifti, write_csv
from wspet.metrics.summary import METRIC_NAMES, case_metrics
from wspet.model.module import LesionSegmenter
from wspet.evaluation.overlays import overlay_figure

log = logging.getLogger(__name__)



def evaluate_cases(
    model: LesionSegmenter,
    cases: Sequence[CaseEntry],
    out_dir: str | Path,
    postprocess: PostProcess | None = None,
    window: Sequence[int] = DEFAULT_WINDOW,
    overlap: Sequence[int] = DEFAULT_OVERLAP,
    threshold: float = 0.5,
    mirror_axes: str | Sequence[int] = (),
) -> list[dict]:
    """Predict every case, write ``out_dir/predictions/<case>_mask.nii.gz`` and ``test_metrics.csv``.

    Returns one row per case (``case`` and :data:`METRIC_NAMES`); cases without a label get
    a mask but no metrics. Masks keep each input's affine and header. ``mirror_axes``: test-time
    mirroring, as ``predict.py``'s (``wspet.inference.sliding_window.mirrored``).
    """
    out_dir = Path(out_dir)
    rows = []
    for case in cases:
        image = load_image(case.image)
        mask = predict_mask(model, image, postprocess, window, overlap, threshold, mirror_axes=mirror_axes)
        save_nifti(mask.astype(np.uint8), image.affine, out_dir / "predictions" / f"{case.name}_mask.nii.gz", like=image.path)
        if case.label is None:
            continue
        label = load_label(case.label, image)
        rows.append({"case": case.name, **case_metrics(mask, label, image.spacing)})
        log.info("%s: Dice %.3f", case.name, rows[-1]["dice"])
    if rows:
        write_csv(out_dir / "test_metrics.csv", rows, ["case", *METRIC_NAMES])
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
