"""``python -m wspet.data.check DATA``: exit 0 and one line on a clean set, exit 1 and every problem otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wspet.data.check import main
from wspet.datasets.phantom import write_phantom_dataset
from tests.data.helpers import store_in_other_axes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check") / "clean"
    write_phantom_dataset(root, n_train=3, n_test=1, seed=0, shape=(32, 32, 32))
    return root


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wspet.data.check", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def corrupt(root: Path) -> None:
    """Three problems in three places: a box, an image, and a label of the test split."""
    index = json.loads((root / "dataset.json").read_text())
    index["training"][1]["boxes"][0] = [40, 10, 5, 38, 30, 20]
    (root / "dataset.json").write_text(json.dumps(index))
    image = nib.load(root / "imagesTr/hn_002.nii.gz")
    array = np.asarray(image.dataobj).copy()
    array.reshape(-1)[:7] = np.nan
    nib.save(nib.Nifti1Image(array, image.affine), root / "imagesTr/hn_002.nii.gz")
    label = nib.load(root / "labelsTs/hn_003.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :30], label.affine), root / "labelsTs/hn_003.nii.gz")


def test_clean_set_exits_0_with_one_line(clean):
    result = run_check(str(clean))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{clean}: clean (3 training + 1 test cases, 8 volumes read, 0 warning(s))"
    ]
    assert result.stderr == ""


def test_corrupted_set_exits_1_printing_every_problem(clean, tmp_path):
    data = Path(shutil.copytree(clean, tmp_path / "data"))
    corrupt(data)
    result = run_check(str(data))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:-1] == [
        "dataset.json: hn_001 box 0 [40, 10, 5, 38, 30, 20]: start >= stop on axis 0",
        "imagesTr/hn_002.nii.gz: 7 NaN voxels; fix or drop the case",
        "labelsTs/hn_003.nii.gz: label shape (32, 32, 30) != image shape (32, 32, 32) (hn_003.nii.gz)",
    ]
    assert lines[-1].startswith(f"{data}: 3 problem(s)")


def test_full_supervision_and_spacing_options(clean, tmp_path, capsys):
    data = Path(shutil.copytree(clean, tmp_path / "data"))
    index = json.loads((data / "dataset.json").read_text())
    del index["training"][0]["label"]
    (data / "dataset.json").write_text(json.dumps(index))
    assert main([str(data)]) == 0  # boxes are enough for weak training
    assert main([str(data), "--supervision", "label"]) == 1
    out = capsys.readouterr().out
    assert "imagesTr/hn_000.nii.gz: hn_000 has no label, needed for supervision=label" in out
    for path in ("imagesTr/hn_001.nii.gz", "labelsTr/hn_001.nii.gz"):
        image = nib.load(data / path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([3.5, 3.5, 5.0, 1.0])), data / path)
    assert main([str(data)]) == 1
    assert "imagesTr/hn_001.nii.gz: spacing (3.5, 3.5, 5) mm is 1.61x the median" in capsys.readouterr().out
    assert main([str(data), "--max-spacing-ratio", "1.7"]) == 0
    assert main([str(data), "--no-spacing-check"]) == 0


def test_missing_folder_and_bad_arguments(tmp_path, capsys):
    result = run_check(str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert f"no dataset.json in {tmp_path / 'nowhere'}" in result.stdout
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--supervision", "boxes"])
    assert exit_.value.code == 2
    assert "invalid choice: 'boxes'" in capsys.readouterr().err


def test_validate_images_for_prediction(clean, tmp_path):
    from wspet.data.check import validate_images

    images = sorted((clean / "imagesTr").glob("hn_*.nii.gz"))
    report = validate_images(images, root=clean)
    assert report.ok and report.n_volumes == 3
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((clean / "imagesTr/hn_000.nii.gz").read_bytes()[:1000])
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([7.0, 3.5, 3.1, 1.0])), flat)
    report = validate_images([*images, broken, flat], max_spacing_ratio=1.2, root=tmp_path)
    assert report.n_volumes == 3
    assert [p.split(":")[0] for p in report.problems] == ["broken.nii.gz", "flat.nii.gz"]
    assert "truncated" in report.problems[0] and "all-zero volume" in report.problems[1]
    report = validate_images([*images, tmp_path / "missing.nii.gz"], root=tmp_path)
    assert report.problems == ["missing.nii.gz: file does not exist"]


def test_spacings_are_compared_in_the_majority_axis_order(tmp_path):
    """A case stored with its axes permuted has the same voxels: its spacing is not refused, only noted."""
    from wspet.data.check import validate_dataset

    root = tmp_path / "set"
    write_phantom_dataset(root, n_train=3, n_test=1, seed=2, shape=(24, 24, 24), spacing=(2.0, 2.0, 4.0))
    store_in_other_axes(root, "hn_001", "SRA")
    report = validate_dataset(root, max_spacing_ratio=1.2)
    assert report.spacings["hn_001"] == (4.0, 2.0, 2.0)  # as stored
    assert report.problems == []
    assert [w for w in report.warnings if "voxel axes SRA differ from most cases' RAS" in w], report.warnings
