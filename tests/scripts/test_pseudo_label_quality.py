"""scripts/pseudo_label_quality.py: the Dice of each box's pseudo-label with its true lesion, per component rule."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("pseudo_label_quality", REPO / "scripts" / "pseudo_label_quality.py")
pseudo_label_quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pseudo_label_quality)


def write_case_beside_hot_uptake(root):
    """One training case: a lesion (SUV 9) in a box whose face cuts hotter uptake (SUV 12)."""
    shape = (40, 40, 30)
    grid = np.indices(shape)
    truth = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, (20, 18, 14)))) <= 5
    image = 1.0 + 8.0 * truth.astype(np.float32)
    image[12:14, 10:27, 6:23] = 12.0
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / "c_000.nii.gz")
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), np.eye(4)), root / "labelsTr" / "c_000.nii.gz")
    index = {"name": "t", "modality": {"0": "PET"}, "labels": {"0": "background", "1": "lesion"},
             "numTraining": 1, "numTest": 0, "test": [],
             "training": [{"image": "imagesTr/c_000.nii.gz", "label": "labelsTr/c_000.nii.gz",
                           "boxes": [[12, 10, 6, 29, 27, 23]]}]}
    (root / "dataset.json").write_text(json.dumps(index))


def test_the_central_rule_finds_the_lesion_that_the_peak_rule_teaches_as_background(tmp_path, capsys):
    write_case_beside_hot_uptake(tmp_path)
    central = pseudo_label_quality.box_dices(str(tmp_path), "otsu", "central")
    peak = pseudo_label_quality.box_dices(str(tmp_path), "otsu", "peak")
    assert len(central) == len(peak) == 1
    assert central[0] > 0.9 and peak[0] == 0.0
    pseudo_label_quality.main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "otsu dataset boxes, component=peak: 1 boxes, Dice 0.000 ± 0.000, 1 below 0.2" in printed
    # central finds the whole sphere; peak the hot slab in the box (2 x 17 x 17 voxels) against the sphere's 515
    assert "component=central: 1 boxes, Dice 1.000 ± 0.000, 0 below 0.2, volume / true volume 1.00 / 1.00 / 1.00" in printed
    assert f"volume / true volume {2 * 17 * 17 / 515:.2f}" in printed
    assert "true voxels found 1.00, found voxels outside the truth 0.00 (medians)" in printed
    assert "true voxels found 0.00, found voxels outside the truth 1.00 (medians)" in printed  # peak's slab


def test_tight_boxes_are_one_per_true_lesion(tmp_path):
    write_case_beside_hot_uptake(tmp_path)
    (tight,) = pseudo_label_quality.box_dices(str(tmp_path), "otsu", "peak", boxes="tight")
    assert tight > 0.9  # the tight box no longer reaches the hotter uptake


def test_fill_holes_adds_a_cold_core_to_the_found_lesion(tmp_path):
    write_case_beside_hot_uptake(tmp_path)
    image_path = tmp_path / "imagesTr" / "c_000.nii.gz"
    image = np.asarray(nib.load(image_path).dataobj).copy()
    grid = np.indices(image.shape)
    image[np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, (20, 18, 14)))) <= 2] = 1.0  # a necrotic core
    nib.save(nib.Nifti1Image(image, np.eye(4)), image_path)
    (rim,) = pseudo_label_quality.box_dices(str(tmp_path), "otsu", "central")
    (filled,) = pseudo_label_quality.box_dices(str(tmp_path), "otsu", "central", fill=True)
    assert rim < 0.97 and filled == 1.0
