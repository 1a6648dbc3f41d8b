"""scripts/torso_phantoms.py: a second generator's set passes wspet's dataset check, boxes around lesions."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from tests.conftest import REPO
from wspet.data.check import validate_dataset


def test_torso_set_is_a_clean_wspet_dataset_with_boxes_around_each_lesion(tmp_path):
    root = tmp_path / "torso"
    command = [sys.executable, str(REPO / "scripts" / "torso_phantoms.py"), str(root), "--cases", "2", "--test-cases", "1"]
    subprocess.run(command, check=True, capture_output=True)
    report = validate_dataset(root)
    assert (report.problems, report.warnings, report.n_training, report.n_test) == ([], [], 2, 1)
    case = json.loads((root / "dataset.json").read_text())["training"][0]
    label = np.asarray(nib.load(root / case["label"]).dataobj) > 0
    in_boxes = np.zeros_like(label)
    for i0, j0, k0, i1, j1, k1 in case["boxes"]:
        in_boxes[i0:i1, j0:j1, k0:k1] = True
    assert label.any() and not (label & ~in_boxes).any()
    assert in_boxes.sum() > label.sum()


def test_torso_generator_refuses_to_write_over_a_dataset(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    command = [sys.executable, str(REPO / "scripts" / "torso_phantoms.py"), str(tmp_path), "--cases", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "dataset.json exists" in result.stderr
    assert (tmp_path / "dataset.json").read_text() == "{}"
