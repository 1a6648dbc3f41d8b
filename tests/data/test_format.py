import json

import nibabel as nib
import numpy as np
import pytest

from wspet.data.format import DatasetError, case_boxes, load_image, load_label, read_dataset


def write_case(root, split_dir, name, shape=(12, 10, 8), value=1.0, label=True, affine=None):
    affine = np.diag([3.5, 3.5, 3.1, 1.0]) if affine is None else affine
    (root / f"images{split_dir}").mkdir(parents=True, exist_ok=True)
    # A slight ramp: a constant image is refused (it cannot be z-normalised).
    image = np.full(shape, value, np.float32) + np.linspace(0, 0.5, shape[0], dtype=np.float32)[:, None, None]
    nib.save(nib.Nifti1Image(image, affine), root / f"images{split_dir}" / f"{name}.nii.gz")
    entry = {"image": f"images{split_dir}/{name}.nii.gz"}
    if label:
        (root / f"labels{split_dir}").mkdir(parents=True, exist_ok=True)
        mask = np.zeros(shape, np.uint8)
        mask[2:5, 3:6, 1:4] = 1
        nib.save(nib.Nifti1Image(mask, affine), root / f"labels{split_dir}" / f"{name}.nii.gz")
        entry["label"] = f"labels{split_dir}/{name}.nii.gz"
    return entry


def write_index(root, training, test=()):
    (root / "dataset.json").write_text(json.dumps({"training": list(training), "test": list(test)}))


def test_reads_cases_with_boxes_and_no_label(tmp_path):
    weak = write_case(tmp_path, "Tr", "a", label=False)
    weak["boxes"] = [[1, 1, 1, 6, 6, 5]]
    full = write_case(tmp_path, "Tr", "b")
    write_index(tmp_path, [weak, full], [write_case(tmp_path, "Ts", "c")])
    index = read_dataset(tmp_path)
    assert [c.name for c in index.training] == ["a", "b"]
    assert index.training[0].label is None and index.training[0].boxes == ((1, 1, 1, 6, 6, 5),)
    assert index.training[1].boxes is None and index.training[1].label.name == "b.nii.gz"
    assert [c.name for c in index.split("test")] == ["c"]


def test_boxes_derived_from_label_with_margin_in_mm(tmp_path):
    write_index(tmp_path, [write_case(tmp_path, "Tr", "b")])
    case = read_dataset(tmp_path).training[0]
    image = load_image(case.image)
    label = load_label(case.label, image)
    assert case_boxes(case, image, label, margin_mm=0) == [[2, 3, 1, 5, 6, 4]]
    # 4 mm on 3.5 x 3.5 x 3.1 mm voxels is 2 voxels on every axis (ceil), clipped at 0
    assert case_boxes(case, image, label, margin_mm=4.0) == [[0, 1, 0, 7, 8, 6]]


def test_every_index_problem_is_reported_together(tmp_path):
    good = write_case(tmp_path, "Tr", "a")
    write_index(
        tmp_path,
        [
            good,
            {"image": "../outside.nii.gz"},
            {"image": "imagesTr/missing.nii.gz"},
            {"label": "labelsTr/a.nii.gz"},
            {"image": "imagesTr/a.nii.gz", "boxes": [[5, 0, 0, 3, 4, 4]]},
        ],
    )
    with pytest.raises(DatasetError) as error:
        read_dataset(tmp_path)
    message = str(error.value)
    assert "escapes the dataset folder" in message
    assert "imagesTr/missing.nii.gz: file does not exist" in message
    assert 'needs an "image" path' in message
    assert "a box 0 [5, 0, 0, 3, 4, 4]: start >= stop on axis 0" in message
    assert "duplicate case name 'a'" in message
    assert len(error.value.problems) == 5


def test_missing_index_and_bad_json(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(tmp_path)


def test_nan_voxels_named_with_the_file(tmp_path):
    entry = write_case(tmp_path, "Tr", "p07", value=np.nan)
    with pytest.raises(DatasetError, match=r"p07.nii.gz: 960 NaN voxels; fix or drop the case$"):
        load_image(tmp_path / entry["image"])


def test_label_on_another_grid_is_refused(tmp_path):
    entry = write_case(tmp_path, "Tr", "a")
    image = load_image(tmp_path / entry["image"])
    other = write_case(tmp_path, "Ts", "b", shape=(12, 10, 9))
    with pytest.raises(DatasetError, match=r"label shape \(12, 10, 9\) != image shape \(12, 10, 8\)"):
        load_label(tmp_path / other["label"], image)


def test_box_outside_volume_clipped_only_when_mostly_inside(tmp_path):
    entry = write_case(tmp_path, "Tr", "a", label=False)
    entry["boxes"] = [[8, 0, 0, 13, 4, 4]]  # 4 of 5 planes inside
    write_index(tmp_path, [entry])
    case = read_dataset(tmp_path).training[0]
    image = load_image(case.image)
    with pytest.warns(UserWarning, match="clipped"):
        assert case_boxes(case, image) == [[8, 0, 0, 12, 4, 4]]
    entry["boxes"] = [[10, 0, 0, 20, 4, 4]]
    write_index(tmp_path, [entry])
    case = read_dataset(tmp_path).training[0]
    with pytest.raises(DatasetError, match=r"a box 0 \[10, 0, 0, 20, 4, 4\]: only 20% inside"):
        case_boxes(case, image)
