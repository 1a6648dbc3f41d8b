"""scripts/postprocess_gain.py: a finished run's test Dice without and with a post-processing step."""

from __future__ import annotations

import csv
import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("postprocess_gain", REPO / "scripts" / "postprocess_gain.py")
postprocess_gain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(postprocess_gain)

SHAPE = (24, 24, 24)


def write_run_with_a_hollow_prediction(tmp_path):
    """A test case whose label is a solid cube and whose kept mask is that cube without its core."""
    root, run = tmp_path / "data", tmp_path / "run"
    for folder in (root / "imagesTs", root / "labelsTs", run / "predictions"):
        folder.mkdir(parents=True)
    truth = np.zeros(SHAPE, np.uint8)
    truth[6:18, 6:18, 6:18] = 1
    hollow = truth.copy()
    hollow[9:15, 9:15, 9:15] = 0
    image = 1.0 + 5.0 * hollow.astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTs" / "c_000.nii.gz")
    nib.save(nib.Nifti1Image(truth, np.eye(4)), root / "labelsTs" / "c_000.nii.gz")
    nib.save(nib.Nifti1Image(hollow, np.eye(4)), run / "predictions" / "c_000_mask.nii.gz")
    index = {"name": "t", "modality": {"0": "PET"}, "labels": {"0": "background", "1": "lesion"},
             "numTraining": 0, "numTest": 1, "training": [],
             "test": [{"image": "imagesTs/c_000.nii.gz", "label": "labelsTs/c_000.nii.gz",
                       "boxes": [[6, 6, 6, 18, 18, 18]]}]}
    (root / "dataset.json").write_text(json.dumps(index))
    return root, run, hollow, truth


def test_filling_a_hollow_prediction_scores_the_solid_label_exactly(tmp_path, capsys):
    root, run, hollow, truth = write_run_with_a_hollow_prediction(tmp_path)
    out = tmp_path / "rows.csv"
    postprocess_gain.main([str(run), str(root), "--postprocess", "fill_holes", "--csv", str(out)])
    hollow_dice = 2 * hollow.sum() / (hollow.sum() + truth.sum())
    (row,) = list(csv.DictReader(out.open()))
    assert float(row["dice_without"]) == pytest.approx(hollow_dice)
    assert float(row["dice_with"]) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert f"1 cases: Dice {hollow_dice:.3f} without, 1.000 with fill_holes; paired +{1 - hollow_dice:.3f}" in printed
    assert "higher in 1, lower in 0" in printed
    assert nib.load(str(run / "predictions" / "c_000_mask.nii.gz")).get_fdata().sum() == hollow.sum()  # input untouched


def test_an_unknown_step_and_an_existing_csv_are_refused(tmp_path):
    root, run, _, _ = write_run_with_a_hollow_prediction(tmp_path)
    with pytest.raises(SystemExit, match="'nonsense': choose one of"):
        postprocess_gain.main([str(run), str(root), "--postprocess", "nonsense"])
    existing = tmp_path / "rows.csv"
    existing.write_text("keep me")
    with pytest.raises(SystemExit, match="rows.csv exists"):
        postprocess_gain.main([str(run), str(root), "--csv", str(existing)])
    assert existing.read_text() == "keep me"


def test_a_run_without_kept_masks_is_refused(tmp_path):
    root, _, _, _ = write_run_with_a_hollow_prediction(tmp_path)
    with pytest.raises(SystemExit, match="no kept test mask"):
        postprocess_gain.main([str(tmp_path / "empty"), str(root)])


def test_a_run_whose_masks_were_already_filled_is_refused(tmp_path):
    root, run, _, _ = write_run_with_a_hollow_prediction(tmp_path)
    (run / "summary.json").write_text(json.dumps({"postprocess": "fill_holes"}))
    with pytest.raises(SystemExit, match="post-processed with 'fill_holes'"):
        postprocess_gain.main([str(run), str(root)])
    (run / "summary.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a run summary"):
        postprocess_gain.main([str(run), str(root)])
    (run / "summary.json").write_text(json.dumps({"postprocess": "none"}))
    postprocess_gain.main([str(run), str(root)])  # the plain output is accepted
