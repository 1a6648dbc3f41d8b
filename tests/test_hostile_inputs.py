"""Bad input is caught on entry with a message naming the file (or case) and the bad value.

Each row of ERRORS corrupts one thing in a copy of a valid 3 + 1 case phantom set and expects
both the whole-dataset check (``validate_dataset``) and the reader as training uses it to refuse
it with a :class:`DatasetError` naming the file and the value; WARNINGS are accepted with a
warning, ACCEPTED without one. Property tests cover the box parser, box masks and the losses.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.boxes import boxes_to_mask, clip_box
from wspet.data.check import validate_dataset
from wspet.data.format import (
    CaseEntry,
    DatasetError,
    DatasetWarning,
    Volume,
    box_problem,
    case_boxes,
    load_image,
    load_label,
    read_dataset,
)
from wspet.datasets.phantom import write_phantom_dataset
from wspet.losses import composite_loss, dice_loss, modified_dice_loss, mumford_shah_loss

CONF = Path(__file__).resolve().parents[1] / "conf"
SHAPE = (32, 32, 32)
SPACING = (3.5, 3.5, 3.1)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "clean"
    write_phantom_dataset(root, n_train=3, n_test=1, seed=0, shape=SHAPE)
    return root


@pytest.fixture
def dataset(phantom, tmp_path) -> Path:
    """A fresh copy of the clean phantom set, to corrupt."""
    return Path(shutil.copytree(phantom, tmp_path / "data"))


# --------------------------------------------------------------------------- corruptions


def edit_index(root: Path, change: Callable[[dict], None]) -> None:
    index = json.loads((root / "dataset.json").read_text())
    change(index)
    (root / "dataset.json").write_text(json.dumps(index))


def edit_case(position: int, change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda root: edit_index(root, lambda index: change(index["training"][position]))


def rewrite(relative: str, change: Callable[[np.ndarray], np.ndarray] = lambda a: a, affine=None, dtype=None):
    """Corruption: load a volume, change its array (and affine or on-disk type), save it in place."""

    def corrupt(root: Path) -> None:
        path = root / relative
        old = nib.load(path)
        array = change(np.asarray(old.dataobj).copy())
        new = nib.Nifti1Image(array, old.affine if affine is None else affine)
        if dtype is not None:
            new.set_data_dtype(dtype)
        nib.save(new, path)

    return corrupt


def set_voxels(value: float, count: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array = array.astype(np.float32)
        array.reshape(-1)[:count] = value
        return array

    return change


def write_bytes(relative: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / relative
        path.write_bytes(make(path.read_bytes()))

    return corrupt


def as_uncompressed_with_dims(dims: tuple[int, int, int]) -> Callable[[Path], None]:
    """hn_001's image as an uncompressed .nii whose header claims ``dims``."""

    def corrupt(root: Path) -> None:
        nib.save(nib.load(root / "imagesTr/hn_001.nii.gz"), root / "imagesTr/hn_001.nii")
        raw = bytearray((root / "imagesTr/hn_001.nii").read_bytes())
        raw[42:48] = np.array(dims, "<i2").tobytes()  # dim[1..3] of the NIfTI-1 header
        (root / "imagesTr/hn_001.nii").write_bytes(bytes(raw))
        edit_index(root, lambda index: index["training"][1].update(image="imagesTr/hn_001.nii"))

    return corrupt


def swap_boxes_ijk(root: Path) -> None:
    """Boxes written as [k0, j0, i0, k1, j1, i1]: another axis order than the array's."""
    edit_case(2, lambda e: e.update(boxes=[[b[2], b[1], b[0], b[5], b[4], b[3]] for b in e["boxes"]]))(root)


def second_spacing(root: Path) -> None:
    """hn_002's image and label on 7 mm voxels along i."""
    affine = np.diag([7.0, SPACING[1], SPACING[2], 1.0])
    for relative in ("imagesTr/hn_002.nii.gz", "labelsTr/hn_002.nii.gz"):
        rewrite(relative, affine=affine)(root)


def zero_spacing(root: Path) -> None:
    """hn_001's sform with a zero column (nibabel refuses to write one, a broken tool may not)."""
    path = root / "imagesTr/hn_001.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[296:312] = np.zeros(4, "<f4").tobytes()  # srow_y
    path.write_bytes(gzip.compress(bytes(raw)))


def zero_pixdim_without_sform(root: Path) -> None:
    """hn_001 with no sform or qform and a voxel size of 0 along j: nibabel would read 1 mm there."""
    path = root / "imagesTr/hn_001.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[84:88] = np.float32(0).tobytes()  # pixdim[2]
    raw[252:256] = np.zeros(2, "<i2").tobytes()  # qform_code, sform_code
    path.write_bytes(gzip.compress(bytes(raw)))


def rgb_image(root: Path) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.diag([*SPACING, 1.0])), root / "imagesTr/hn_001.nii.gz")


def both(*corruptions: Callable[[Path], None]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        for corruption in corruptions:
            corruption(root)

    return corrupt


def drop(key: str) -> Callable[[dict], None]:
    return lambda entry: entry.pop(key)


BOX = "hn_001 box"
ERRORS = [
    # (id, corruption, fragments every message must hold, validate_dataset options, the reader raises too)
    ("no dataset.json", lambda r: (r / "dataset.json").unlink(), ["no dataset.json in"], {}, True),
    ("dataset.json not JSON", write_bytes("dataset.json", lambda b: b[:40]), ["dataset.json", "not valid JSON"], {}, True),
    ("dataset.json a list", lambda r: (r / "dataset.json").write_text("[1, 2]"), ["dataset.json", "needs a JSON object", "[1, 2]"], {}, True),
    ("no training key", lambda r: edit_index(r, lambda i: i.pop("training")), ["dataset.json", 'no "training" key'], {}, True),
    ("training not a list", lambda r: edit_index(r, lambda i: i.update(training={"a": 1})), ['"training" is', "{'a': 1}"], {}, True),
    ("entry without image", edit_case(1, drop("image")), ['training[1]: needs an "image" path', "labelsTr/hn_001.nii.gz"], {}, True),
    ("path escapes with ..", edit_case(1, lambda e: e.update(image="../clean/imagesTr/hn_001.nii.gz")),
     ["training[1] image", "../clean/imagesTr/hn_001.nii.gz", "escapes the dataset folder"], {}, True),
    ("absolute path", edit_case(1, lambda e: e.update(image="/etc/hn_001.nii.gz")),
     ["training[1] image", "/etc/hn_001.nii.gz", "is absolute"], {}, True),
    ("not a NIfTI name", edit_case(1, lambda e: e.update(image="imagesTr/hn_001.png")),
     ["training[1] image", "imagesTr/hn_001.png", "not a NIfTI file"], {}, True),
    ("duplicate case names", lambda r: edit_index(r, lambda i: i["test"][0].update(image="imagesTr/hn_001.nii.gz")),
     ["duplicate case name 'hn_001'", "training", "test"], {}, True),
    ("missing file", edit_case(1, lambda e: e.update(image="imagesTr/nope.nii.gz")),
     ["imagesTr/nope.nii.gz: file does not exist"], {}, True),
    ("folder instead of file", lambda r: (r / "imagesTr/hn_001.nii.gz").unlink() or (r / "imagesTr/hn_001.nii.gz").mkdir(),
     ["imagesTr/hn_001.nii.gz: not a file"], {}, True),
    ("label is the image", edit_case(1, lambda e: e.update(label="imagesTr/hn_001.nii.gz")),
     ["hn_001: label imagesTr/hn_001.nii.gz is the image file itself"], {}, True),
    ("garbage bytes", write_bytes("imagesTr/hn_001.nii.gz", lambda b: b"not a nifti file at all" * 10),
     ["imagesTr/hn_001.nii.gz", "cannot be read as NIfTI", "gzip"], {}, True),
    ("truncated gzip", write_bytes("imagesTr/hn_001.nii.gz", lambda b: b[: len(b) // 2]),
     ["imagesTr/hn_001.nii.gz", "truncated"], {}, True),
    ("header promises more than the file", as_uncompressed_with_dims((64, 64, 64)),
     ["imagesTr/hn_001.nii", "truncated: the header promises", "(64, 64, 64)"], {}, True),
    ("header shape absurdly large", as_uncompressed_with_dims((2000, 2000, 2000)),
     ["imagesTr/hn_001.nii", "(2000, 2000, 2000)", "too large"], {}, True),
    ("4D with 3 frames", rewrite("imagesTr/hn_001.nii.gz", lambda a: np.stack([a] * 3, axis=-1)),
     ["imagesTr/hn_001.nii.gz", "(32, 32, 32, 3) has 3 frames"], {}, True),
    ("RGB voxels", rgb_image, ["imagesTr/hn_001.nii.gz", "voxel type", "not a number type"], {}, True),
    ("zero spacing", zero_spacing,
     ["imagesTr/hn_001.nii.gz", "degenerate voxel spacing (3.5, 0, 3.1) mm"], {}, True),
    ("zero voxel size, no sform", zero_pixdim_without_sform,
     ["imagesTr/hn_001.nii.gz", "voxel size (3.5, 0, 3.1) mm", "pixdim", "nibabel would take 1 mm"], {}, True),
    ("NaN voxels", rewrite("imagesTr/hn_001.nii.gz", set_voxels(np.nan, 12)),
     ["imagesTr/hn_001.nii.gz: 12 NaN voxels; fix or drop the case"], {}, True),
    ("inf voxels", rewrite("imagesTr/hn_001.nii.gz", set_voxels(-np.inf, 3)),
     ["imagesTr/hn_001.nii.gz: 3 inf voxels"], {}, True),
    ("beyond float32", rewrite("imagesTr/hn_001.nii.gz", lambda a: np.where(a > a.max() * 0.99, 1e300, a.astype(np.float64))),
     ["imagesTr/hn_001.nii.gz: ", "inf voxels (or beyond the float32 range)"], {}, True),
    ("NaN in a test image", rewrite("imagesTs/hn_003.nii.gz", set_voxels(np.nan, 5)),
     ["imagesTs/hn_003.nii.gz: 5 NaN voxels"], {}, True),
    ("strongly negative SUV", rewrite("imagesTr/hn_001.nii.gz", set_voxels(-7.25, 4)),
     ["imagesTr/hn_001.nii.gz", "minimum -7.25 is below -1"], {}, True),
    ("all-zero volume", rewrite("imagesTr/hn_001.nii.gz", np.zeros_like),
     ["imagesTr/hn_001.nii.gz", "all-zero volume"], {}, True),
    ("constant volume", rewrite("imagesTr/hn_001.nii.gz", lambda a: np.full_like(a, 2.5)),
     ["imagesTr/hn_001.nii.gz", "constant volume (every voxel 2.5)"], {}, True),
    ("label shape differs", rewrite("labelsTr/hn_001.nii.gz", lambda a: a[:, :, :31]),
     ["labelsTr/hn_001.nii.gz", "label shape (32, 32, 31) != image shape (32, 32, 32)"], {}, True),
    ("label affine differs", rewrite("labelsTr/hn_001.nii.gz", affine=np.array(
        [[3.5, 0, 0, 2.0], [0, 3.5, 0, 0], [0, 0, 3.1, 0], [0, 0, 0, 1]])),
     ["labelsTr/hn_001.nii.gz", "label affine differs", "by up to 2 mm"], {}, True),
    ("label not integers", rewrite("labelsTr/hn_001.nii.gz", lambda a: a * np.float32(0.5)),
     ["labelsTr/hn_001.nii.gz", "label voxels are not integers (e.g. 0.5)"], {}, True),
    ("label negative", rewrite("labelsTr/hn_001.nii.gz", lambda a: -a.astype(np.int16)),
     ["labelsTr/hn_001.nii.gz", "negative label voxels (e.g. -1)"], {}, True),
    ("empty label, full supervision", both(rewrite("labelsTr/hn_001.nii.gz", np.zeros_like), edit_case(1, drop("boxes"))),
     ["hn_001: no lesion: the label hn_001.nii.gz is empty", '"lesion_free": true'], {"supervision": "label"}, True),
    ("empty label against boxes", rewrite("labelsTr/hn_001.nii.gz", np.zeros_like),
     ["hn_001: hn_001.nii.gz has no lesion voxels but 2 box(es) are given"], {"supervision": "label"}, True),
    ("no label, full supervision", edit_case(1, drop("label")),
     ["imagesTr/hn_001.nii.gz", "hn_001 has no label, needed for supervision=label"], {"supervision": "label"}, False),
    ("box of five numbers", edit_case(1, lambda e: e["boxes"].__setitem__(0, [1, 2, 3, 4, 5])),
     [f"{BOX} 0 [1, 2, 3, 4, 5]: not six integers"], {}, True),
    ("box of floats", edit_case(1, lambda e: e["boxes"].__setitem__(1, [1.5, 2, 3, 4, 5, 6])),
     [f"{BOX} 1 [1.5, 2, 3, 4, 5, 6]: not six integers"], {}, True),
    ("box not a list", edit_case(1, lambda e: e.update(boxes="[1, 2, 3, 4, 5, 6]")),
     ["hn_001 boxes: '[1, 2, 3, 4, 5, 6]' is not a list"], {}, True),
    ("box start >= stop", edit_case(1, lambda e: e["boxes"].__setitem__(1, [40, 10, 5, 38, 30, 20])),
     [f"{BOX} 1 [40, 10, 5, 38, 30, 20]: start >= stop on axis 0"], {}, True),
    ("box wholly outside", edit_case(1, lambda e: e["boxes"].__setitem__(0, [40, 0, 0, 45, 5, 5])),
     [f"{BOX} 0 [40, 0, 0, 45, 5, 5]: only 0% inside the volume (32, 32, 32)"], {}, True),
    ("box mostly outside", edit_case(1, lambda e: e["boxes"].__setitem__(0, [28, 6, 1, 48, 25, 11])),
     [f"{BOX} 0 [28, 6, 1, 48, 25, 11]: only 20% inside"], {}, True),
    ("empty box list, no label", edit_case(1, lambda e: e.update(boxes=[]) or e.pop("label")),
     ["hn_001: no lesion: its box list is empty", '"lesion_free": true'], {}, True),
    ("empty box list against the label", edit_case(1, lambda e: e.update(boxes=[])),
     ["hn_001: box list is empty but hn_001.nii.gz has", "lesion voxels"], {}, True),
    ("boxes in k, j, i order", swap_boxes_ijk,
     ["hn_002: the boxes hold 28% of the", "lesion voxels of hn_002.nii.gz", "voxel indices"], {}, True),
    ("lesion_free with boxes", edit_case(1, lambda e: e.update(lesion_free=True)),
     ["hn_001: lesion_free is true but 2 box(es) are given"], {}, True),
    ("lesion_free with a lesion label", edit_case(1, lambda e: e.update(lesion_free=True) or e.pop("boxes")),
     ["hn_001: lesion_free is true but hn_001.nii.gz has", "lesion voxels"], {}, True),
    ("lesion_free not a bool", edit_case(1, lambda e: e.update(lesion_free="yes")),
     ["hn_001: lesion_free 'yes' is not true or false"], {}, True),
    ("spacing outlier", second_spacing,
     ["imagesTr/hn_002.nii.gz: spacing (7, 3.5, 3.1) mm is 2.00x the median (3.5, 3.5, 3.1) mm on axis 0"],
     {}, False),
]


def read_like_training(root: Path, supervision: str = "box") -> None:
    """What train and evaluate do on entry: the index, then every volume and the boxes."""
    index = read_dataset(root)
    for case in index.training:
        image = load_image(case.image)
        label = load_label(case.label, image) if case.label is not None else None
        case_boxes(case, image, label, margin_mm=5.0)
    for case in index.test:
        image = load_image(case.image)
        if case.label is not None:
            load_label(case.label, image)


@pytest.mark.parametrize(
    "corrupt, fragments, options, reader_raises",
    [row[1:] for row in ERRORS],
    ids=[row[0] for row in ERRORS],
)
def test_bad_input_is_refused_naming_file_and_value(dataset, corrupt, fragments, options, reader_raises):
    corrupt(dataset)
    report = validate_dataset(dataset, **options)
    matching = [p for p in report.problems if all(f in p for f in fragments)]
    assert matching, f"no problem holds {fragments}: {report.problems}"
    assert len(report.problems) == 1, report.problems  # only the corruption, nothing else
    assert not report.ok
    with pytest.raises(DatasetError) as error:
        report.raise_if_problems()
    assert all(f in str(error.value) for f in fragments)
    if reader_raises:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DatasetWarning)
            with pytest.raises(DatasetError) as error:
                read_like_training(dataset, **options)
        assert isinstance(error.value, ValueError)
        assert all(f in str(error.value) for f in fragments), str(error.value)


def test_clean_phantom_set_is_clean(dataset):
    report = validate_dataset(dataset, supervision="label")
    assert report.ok and report.warnings == []
    assert (report.n_training, report.n_test, report.n_volumes) == (3, 1, 8)
    assert report.spacings["hn_000"] == pytest.approx(SPACING)
    read_like_training(dataset)


def test_every_problem_of_a_dataset_is_reported_together(dataset):
    rewrite("imagesTr/hn_000.nii.gz", set_voxels(np.nan, 12))(dataset)
    rewrite("labelsTr/hn_001.nii.gz", lambda a: a[:, :, :31])(dataset)
    rewrite("imagesTs/hn_003.nii.gz", np.zeros_like)(dataset)
    edit_case(2, lambda e: e["boxes"].__setitem__(0, [40, 10, 5, 38, 30, 20]))(dataset)
    edit_index(dataset, lambda i: i["training"].append({"image": "imagesTr/missing.nii.gz"}))
    report = validate_dataset(dataset)
    expected = [
        "dataset.json: hn_002 box 0 [40, 10, 5, 38, 30, 20]: start >= stop on axis 0",
        "dataset.json: imagesTr/missing.nii.gz: file does not exist",
        "imagesTr/hn_000.nii.gz: 12 NaN voxels; fix or drop the case",
        "labelsTr/hn_001.nii.gz: label shape (32, 32, 31) != image shape (32, 32, 32) (hn_001.nii.gz)",
        "imagesTs/hn_003.nii.gz: all-zero volume; an empty or blank scan",
    ]
    assert sorted(report.problems) == sorted(expected)
    # hn_002's volumes were still read despite its bad box; its box checks were not run twice
    assert report.n_volumes == 0 + 1 + 2 + 0  # hn_000's image, hn_001's label and hn_003's image fail
    assert "5 problem(s)" in report.summary()


# --------------------------------------------------------------------------- accepted input

WARNINGS = [
    ("4D image with one frame", rewrite("imagesTr/hn_001.nii.gz", lambda a: a[..., None]),
     ["imagesTr/hn_001.nii.gz: 4D image with one frame (32, 32, 32, 1)"], True),
    ("raw integer image", rewrite("imagesTr/hn_001.nii.gz", lambda a: np.round(a * 10).astype(np.int16)),
     ["imagesTr/hn_001.nii.gz: integer voxels (int16) without a scale slope"], True),
    ("implausible SUV", rewrite("imagesTr/hn_001.nii.gz", lambda a: a * 1000),
     ["imagesTr/hn_001.nii.gz: maximum", "not a plausible SUV"], True),
    ("box partly outside", edit_case(1, lambda e: e["boxes"].__setitem__(0, [-2, 6, 1, 7, 25, 11])),
     ["hn_001 box 0 [-2, 6, 1, 7, 25, 11]: clipped to volume (32, 32, 32) as [0, 6, 1, 7, 25, 11]"], True),
    ("box without lesion", edit_case(1, lambda e: e["boxes"].append([28, 0, 28, 32, 3, 32])),
     ["hn_001 box 2 [28, 0, 28, 32, 3, 32]: holds no lesion voxel of hn_001.nii.gz"], True),
    ("label values 0, 1, 2", rewrite("labelsTr/hn_001.nii.gz", lambda a: np.where(a > 0, 1 + np.indices(a.shape)[0] % 2, 0).astype(np.uint8)),
     ["labelsTr/hn_001.nii.gz: label values [0, 1, 2]: every value > 0 is taken as lesion"], True),
    ("unknown key", edit_case(1, lambda e: e.update(box=e["boxes"])),
     ["dataset.json training[1]: unknown key(s) ['box'] ignored"], True),
    ("numTraining disagrees", lambda r: edit_index(r, lambda i: i.update(numTraining=4)),
     ["dataset.json: numTraining is 4 but 'training' lists 3 cases"], True),
    ("flipped orientation", both(
        rewrite("imagesTr/hn_001.nii.gz", affine=np.diag([-3.5, 3.5, 3.1, 1.0])),
        rewrite("labelsTr/hn_001.nii.gz", affine=np.diag([-3.5, 3.5, 3.1, 1.0]))),
     ["imagesTr/hn_001.nii.gz: voxel axes LAS differ from most cases' RAS"], False),
]


@pytest.mark.parametrize(
    "corrupt, fragments, reader_warns", [row[1:] for row in WARNINGS], ids=[row[0] for row in WARNINGS]
)
def test_doubtful_input_is_accepted_with_a_warning(dataset, corrupt, fragments, reader_warns):
    corrupt(dataset)
    report = validate_dataset(dataset)
    assert report.ok, report.problems
    assert len(report.warnings) == 1 and all(f in report.warnings[0] for f in fragments), report.warnings
    if reader_warns:  # orientation is compared across cases, by validate_dataset alone
        with pytest.warns(DatasetWarning) as caught:
            read_like_training(dataset)
        assert any(all(f in str(w.message) for f in fragments[-1:]) for w in caught)


def test_box_partly_outside_is_clipped_to_the_volume(dataset):
    edit_case(1, lambda e: e["boxes"].__setitem__(0, [2, 6, 1, 7, 25, 40]))(dataset)  # k 1..40, 31 of 39 inside
    case = read_dataset(dataset).training[1]
    with pytest.warns(DatasetWarning, match=r"clipped to volume \(32, 32, 32\) as \[2, 6, 1, 7, 25, 32\]"):
        boxes = case_boxes(case, load_image(case.image))
    assert boxes[0] == [2, 6, 1, 7, 25, 32]


def test_acceptable_input_passes_silently(dataset):
    # noise-level negatives, an integer image with a scale slope, a symlinked file inside the folder
    rewrite("imagesTr/hn_000.nii.gz", set_voxels(-0.9, 20))(dataset)
    original = nib.load(dataset / "imagesTr/hn_001.nii.gz")
    values = np.asarray(original.dataobj)
    stored = nib.Nifti1Image(values, original.affine)
    stored.set_data_dtype(np.int16)  # nibabel picks a scale slope to fit the float values
    nib.save(stored, dataset / "imagesTr/hn_001.nii.gz")
    slope = nib.load(dataset / "imagesTr/hn_001.nii.gz").dataobj.slope
    target = dataset / "elsewhere" / "hn_002.nii.gz"
    target.parent.mkdir()
    (dataset / "imagesTr/hn_002.nii.gz").rename(target)
    (dataset / "imagesTr/hn_002.nii.gz").symlink_to(target)
    report = validate_dataset(dataset)
    assert report.ok and report.warnings == [], (report.problems, report.warnings)
    image = load_image(dataset / "imagesTr/hn_001.nii.gz")
    assert image.array.dtype == np.float32
    assert 0 < slope < 0.01 and np.abs(image.array - values).max() <= slope  # scaled back to SUV
    assert read_dataset(dataset).training[2].name == "hn_002"


def test_inputs_are_never_modified_by_the_check(dataset):
    rewrite("imagesTr/hn_001.nii.gz", set_voxels(np.nan, 3))(dataset)
    before = {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    validate_dataset(dataset)
    read_dataset(dataset)
    assert {p: p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before


def test_validation_options_are_checked():
    with pytest.raises(ValueError, match=r"supervision 'boxes' is not one of \('box', 'label'"):
        validate_dataset(".", supervision="boxes")
    with pytest.raises(ValueError, match=r"max_spacing_ratio 0.5 is not >= 1"):
        validate_dataset(".", max_spacing_ratio=0.5)


def test_spacing_check_can_be_loosened(dataset):
    second_spacing(dataset)
    assert validate_dataset(dataset, max_spacing_ratio=2.5).ok
    assert validate_dataset(dataset, max_spacing_ratio=None).ok


# --------------------------------------------------------------------------- configuration


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_unknown_loss_lists_the_valid_choices():
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(["loss=nonsense"])
    message = str(error.value)
    assert "loss/nonsense" in message
    assert all(name in message for name in ("dice", "fs", "mdice", "mdice_ms"))


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'data.nonsense_key'"):
        compose_train(["data.nonsense_key=1"])
    assert compose_train(["data.box_margin_mm=3"]).data.box_margin_mm == 3  # a real key goes through


def test_unknown_supervision_lists_the_valid_choices():
    from wspet.data.datamodule import PetDataModule

    with pytest.raises(ValueError, match=r"supervision 'boxes' is not one of \('box', 'label'"):
        PetDataModule(root=".", supervision="boxes")


# --------------------------------------------------------------------------- properties

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=3)
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=6, max_size=6) | st.lists(JSON_SCALARS, max_size=8) | JSON_SCALARS)
def test_box_parser_accepts_exactly_six_ints_with_start_below_stop(value):
    valid = (
        isinstance(value, list)
        and len(value) == 6
        and all(type(v) is int for v in value)
        and all(value[a] < value[a + 3] for a in range(3))
    )
    problem = box_problem(value)
    assert (problem is None) == valid
    if problem is not None and isinstance(value, list) and len(value) == 6 and all(type(v) is int for v in value):
        axis = next(a for a in range(3) if value[a] >= value[a + 3])
        assert problem == f"start >= stop on axis {axis}"


@st.composite
def volume_and_box(draw):
    """A volume shape, a spacing and a box that may stick out of the volume (or miss it)."""
    shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.5, 6.0)) for _ in range(3))
    start = [draw(st.integers(-8, n + 4)) for n in shape]
    stop = [s + draw(st.integers(1, 14)) for s in start]
    return shape, spacing, start + stop


def volume(shape, spacing) -> Volume:
    return Volume(array=np.ones(shape, np.float32), affine=np.diag([*spacing, 1.0]), path=Path("image.nii.gz"))


@settings(max_examples=100, deadline=None)
@given(volume_and_box())
def test_given_box_mask_lies_inside_and_covers_exactly_the_clipped_box(case):
    shape, spacing, box = case
    entry = CaseEntry("c", "training", Path("image.nii.gz"), None, (tuple(box),))
    clipped, fraction = clip_box(box, shape)
    inside = np.ones(shape, bool)
    grid = np.indices(shape)
    for a in range(3):
        inside &= (grid[a] >= box[a]) & (grid[a] < box[a + 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        if fraction < 0.5:
            with pytest.raises(DatasetError, match=r"c box 0 .*% inside the volume"):
                case_boxes(entry, volume(shape, spacing))
            return
        boxes = case_boxes(entry, volume(shape, spacing))
    assert boxes == [clipped]
    mask = boxes_to_mask(boxes, shape)
    assert mask.shape == shape
    assert np.array_equal(mask.astype(bool), inside)  # the box's voxels in the volume, no others
    assert int(mask.sum()) == pytest.approx(fraction * math.prod(b - a for a, b in zip(box[:3], box[3:])))


@settings(max_examples=60, deadline=None)
@given(volume_and_box(), st.floats(0.0, 12.0))
def test_derived_box_is_the_component_grown_by_the_margin_in_mm(case, margin_mm):
    shape, spacing, box = case
    clipped, fraction = clip_box(box, shape)
    if fraction == 0:
        return
    label = boxes_to_mask([clipped], shape)  # one box-shaped lesion
    entry = CaseEntry("c", "training", Path("image.nii.gz"), Path("label.nii.gz"), None)
    (derived,) = case_boxes(entry, volume(shape, spacing), label, margin_mm=margin_mm)
    margin = [math.ceil(margin_mm / s) for s in spacing]
    expected = [max(clipped[a] - margin[a], 0) for a in range(3)] + [
        min(clipped[a + 3] + margin[a], shape[a]) for a in range(3)
    ]
    assert derived == expected
    assert boxes_to_mask([derived], shape)[label.astype(bool)].all()


@st.composite
def loss_inputs(draw):
    """Predictions anywhere in [0, 1] (exact 0 and 1 included), any boxes, any finite image."""
    batch = draw(st.integers(1, 2))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probs = rng.choice([0.0, 1.0, 0.5, np.nextafter(0, 1), np.nextafter(1, 0)], size=(batch, 1, *shape))
    probs = np.where(rng.random(probs.shape) < 0.5, rng.random(probs.shape), probs)
    box = np.zeros((batch, 1, *shape), np.float32)
    for b in range(batch):
        for _ in range(draw(st.integers(0, 3))):
            start = [int(rng.integers(0, n)) for n in shape]
            stop = [int(rng.integers(s + 1, n + 1)) for s, n in zip(start, shape)]
            box[b, 0] += boxes_to_mask([start + stop], shape)
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 1e4]))
    image = rng.normal(size=probs.shape) * scale + draw(st.sampled_from([0.0, -3.0, 50.0]))
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return as_tensor(image), as_tensor(probs).requires_grad_(True), as_tensor(box > 0)


@settings(max_examples=60, deadline=None)
@given(loss_inputs())
def test_losses_are_finite_for_any_prediction_and_any_box(inputs):
    image, probs, box = inputs
    losses = {
        "dice": dice_loss(probs, box),
        "mdice": modified_dice_loss(probs, box),
        "ms": mumford_shah_loss(image, probs, box),
        "composite": composite_loss(image, probs, box),
    }
    for name, loss in losses.items():
        (gradient,) = torch.autograd.grad(loss, probs)
        assert torch.isfinite(loss), (name, loss)
        assert torch.isfinite(gradient).all(), name
    assert 0.0 <= losses["dice"].item() <= 1.0 + 1e-6


# --------------------------------------------------------------------------- resource bombs and links


def write_gzip_bomb(path: Path, shape=(1024, 1024, 1024)) -> Path:
    """A NIfTI of ``shape`` uint8 zeros, gzipped fast: under 5 MB on disk for 1 GiB of voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    chunk = bytes(1 << 24)
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\0\0\0\0")
        for _ in range(math.prod(shape) // len(chunk)):
            handle.write(chunk)
    return path


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory) -> Path:
    return write_gzip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.nii.gz")


def test_a_gzip_bomb_is_refused_from_its_header(gzip_bomb, tmp_path):
    from wspet.datasets.convert import convert_dataset

    assert gzip_bomb.stat().st_size < 5 * 2**20
    with pytest.raises(DatasetError, match=r"bomb.nii.gz: header shape \(1024, 1024, 1024\) \(1073741824 voxels\) is too large"):
        load_image(gzip_bomb)
    image = Volume(array=np.ones((4, 4, 4), np.float32), affine=np.eye(4), path=tmp_path / "i.nii.gz")
    with pytest.raises(DatasetError, match=r"bomb.nii.gz: header shape \(1024, 1024, 1024\)"):
        load_label(gzip_bomb, image)
    # A 1024^3 label given to the converter: refused before its image or label is decompressed.
    src = tmp_path / "src" / "case1"
    src.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(0.5, 2, (8, 8, 8)).astype(np.float32), np.eye(4)),
             src / "PET_image.nii.gz")
    (src / "PET_mask.nii.gz").symlink_to(gzip_bomb)
    with pytest.raises(ValueError, match=r"PET_mask.nii.gz: header shape \(1024, 1024, 1024\)"):
        convert_dataset(tmp_path / "src", tmp_path / "out", layout="sts", test_fraction=0.0, log=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_a_resampled_grid_beyond_the_voxel_limit_is_refused_beforehand():
    from wspet.data.format import MAX_VOXELS
    from wspet.data.preprocessing import Preprocessing

    prepare = Preprocessing(target_spacing=(4.0, 4.0, 4.0))
    huge = np.diag([1000.0, 1000.0, 1000.0, 1.0])
    assert prepare.network_shape((16, 16, 16), huge) == (4000, 4000, 4000)
    with pytest.raises(ValueError, match=r"scan.nii.gz: shape \(16, 16, 16\) at spacing \[1000.0, 1000.0, 1000.0\] mm "
                                         r"resampled to \[4.0, 4.0, 4.0\] mm is a \(4000, 4000, 4000\) grid"):
        prepare.check_grid((16, 16, 16), huge, "scan.nii.gz")
    with pytest.raises(ValueError, match=rf"limit {MAX_VOXELS}"):
        prepare.to_network_grid(np.ones((16, 16, 16), np.float32), huge)
    image, affine = prepare.to_network_grid(np.ones((16, 16, 16), np.float32), np.diag([60.0, 60.0, 60.0, 1.0]))
    assert image.shape == (240, 240, 240)  # large but within the limit: still predicted


def test_an_image_linked_from_outside_the_root_is_followed_with_a_warning(dataset, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    moved = outside / "hn_001.nii.gz"
    shutil.move(dataset / "imagesTr" / "hn_001.nii.gz", moved)
    (dataset / "imagesTr" / "hn_001.nii.gz").symlink_to(moved)
    with pytest.warns(DatasetWarning, match=rf"imagesTr/hn_001.nii.gz is a symbolic link .* to {moved}, outside the dataset"):
        index = read_dataset(dataset)
    assert load_image(index.training[0].image).array.shape == SHAPE
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # links inside the root are silent
        shutil.move(moved, dataset / "hn_001_real.nii.gz")
        (dataset / "imagesTr" / "hn_001.nii.gz").unlink()
        (dataset / "imagesTr" / "hn_001.nii.gz").symlink_to(dataset / "hn_001_real.nii.gz")
        read_dataset(dataset)


def test_a_split_folder_linked_from_outside_the_root_is_followed_with_a_warning(dataset, tmp_path):
    outside = Path(shutil.move(dataset / "labelsTr", tmp_path / "labels_elsewhere"))
    (dataset / "labelsTr").symlink_to(outside, target_is_directory=True)
    with pytest.warns(DatasetWarning, match=rf"labelsTr/hn_001.nii.gz is a symbolic link \(or lies in a linked folder\) to {outside}"):
        index = read_dataset(dataset)
    assert [case.label.parent.name for case in index.training] == ["labelsTr"] * 3
