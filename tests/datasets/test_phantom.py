from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from wspet.data.boxes import box_dice, boxes_to_mask
from wspet.datasets.phantom import (
    AIR,
    BODY,
    BRAIN,
    ORGAN,
    global_threshold_dice,
    make_phantom,
    threshold_in_box_dice,
    write_phantom_dataset,
)

SMALL = (64, 64, 48)
SPACING = (3.5, 3.5, 3.1)
TINY = (48, 48, 40)  # for the dataset writer and CLI: fast, still holds lesions
FULL = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(SMALL, SPACING, rng=np.random.default_rng(seed)) for seed in range(10)]


def test_arrays_types_and_shapes(phantoms):
    p = phantoms[0]
    assert p.image.shape == p.label.shape == p.tissue.shape == SMALL
    assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
    assert set(np.unique(p.label)) == {0, 1}
    assert p.spacing == SPACING
    assert p.image.min() >= 0.0


def test_box_dice_near_paper(phantoms):
    dices = [box_dice(p.boxes, p.label) for p in phantoms]
    assert 0.18 <= np.mean(dices) <= 0.38
    assert np.std(dices) > 0.03  # annotators differ from case to case


def test_one_box_per_lesion_holding_it(phantoms):
    for p in phantoms:
        _, n = ndimage.label(p.label, structure=FULL)
        assert 1 <= n <= 12
        assert len(p.boxes) == len(p.lesion_suvmax) == len(p.lesion_volume_ml) == n
        assert not np.any(p.label & (1 - boxes_to_mask(p.boxes, p.label.shape)))


def test_lesion_volumes_in_ml(phantoms):
    voxel_ml = np.prod(SPACING) / 1000.0
    volumes = [v for p in phantoms for v in p.lesion_volume_ml]
    assert all(0.5 <= v <= 30.0 for v in volumes)
    assert max(volumes) >= 1.0
    for p in phantoms:
        assert sum(p.lesion_volume_ml) == pytest.approx(p.label.sum() * voxel_ml)


def test_suv_ranges(phantoms):
    for p in phantoms:
        assert 0.5 <= np.median(p.image[p.tissue == BODY]) <= 1.5
        assert 6.0 <= p.image[p.tissue == BRAIN].max() <= 13.0
        assert all(3.0 <= s <= 20.0 for s in p.lesion_suvmax)
        far_air = ndimage.binary_erosion(p.tissue == AIR, iterations=3)
        assert p.image[far_air].max() < 0.1


def test_lesions_in_body_not_brain(phantoms):
    for p in phantoms:
        assert set(np.unique(p.tissue[p.label == 1])) <= {BODY, ORGAN}


def test_psf_spills_activity_past_the_lesion_edge(phantoms):
    p = phantoms[0]
    lesion = p.label == 1
    shell = ndimage.binary_dilation(lesion, structure=FULL) & ~lesion
    assert p.image[shell].mean() > 1.3 * np.median(p.image[p.tissue == BODY])


def test_41_percent_threshold_in_tight_box_is_good_not_perfect(phantoms):
    dices = [d for p in phantoms for d in threshold_in_box_dice(p.image, p.label)]
    assert 0.65 <= np.mean(dices) <= 0.9


def test_global_thresholds_fail_on_physiology(phantoms):
    g41 = [global_threshold_dice(p.image, p.label, 0.41 * p.image.max()) for p in phantoms]
    g25 = [global_threshold_dice(p.image, p.label, 2.5) for p in phantoms]
    assert np.mean(g41) < 0.5 and np.mean(g25) < 0.5


def test_noise_cov_near_15_percent_in_soft_tissue():
    noisy = make_phantom(SMALL, SPACING, rng=np.random.default_rng(3))
    clean = make_phantom(SMALL, SPACING, rng=np.random.default_rng(3), noise_cov=0.0)
    region = (clean.tissue == BODY) & (clean.image > 0.8) & (clean.image < 1.2)
    cov = np.std(noisy.image[region] - clean.image[region]) / clean.image[region].mean()
    assert 0.12 <= cov <= 0.18


def test_same_seed_same_arrays_other_seed_differs():
    a = make_phantom(SMALL, SPACING, rng=np.random.default_rng(7))
    b = make_phantom(SMALL, SPACING, rng=np.random.default_rng(7))
    c = make_phantom(SMALL, SPACING, rng=np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, c.image)


def test_default_shape_has_brain_on_top_and_neck_below():
    p = make_phantom(rng=np.random.default_rng(0))
    assert p.image.shape == (96, 96, 64) and p.spacing == (3.5, 3.5, 3.1)
    brain_slices = np.flatnonzero((p.tissue == BRAIN).any(axis=(0, 1)))
    assert brain_slices.max() == 63 and brain_slices.min() > 32
    lesion_slices = np.flatnonzero(p.label.any(axis=(0, 1)))
    assert lesion_slices.max() < 63


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match=r"shape \(8, 8, 8\) is not 3 ints >= 24"):
        make_phantom((8, 8, 8), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"spacing \(3.5, 0.0, 3.1\)"):
        make_phantom(SMALL, (3.5, 0.0, 3.1), rng=np.random.default_rng(0))


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_dataset_written_in_msd_layout(tmp_path):
    out = tmp_path / "set"
    summary = write_phantom_dataset(out, n_train=2, n_test=1, seed=5, shape=TINY)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "wspet-phantom-hn" and meta["licence"] == "CC0"
    assert meta["modality"] == {"0": "PET"}
    assert meta["labels"] == {"0": "background", "1": "lesion"}
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    assert meta["phantom"]["seed"] == 5 and meta["phantom"]["shape"] == list(TINY)
    assert meta["phantom"]["box_dice_mean"] == pytest.approx(summary["box_dice_mean"])
    assert [e["image"] for e in meta["training"]] == [
        "imagesTr/hn_000.nii.gz", "imagesTr/hn_001.nii.gz"
    ]
    assert meta["test"][0]["label"] == "labelsTs/hn_002.nii.gz"
    assert not list(out.rglob(".tmp-*"))

    entry = meta["test"][0]
    image = nib.load(out / entry["image"])
    label = _load(out / entry["label"])
    assert image.shape == TINY and image.get_data_dtype() == np.float32
    assert label.dtype == np.uint8
    assert np.allclose(image.header.get_zooms(), SPACING)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    # The case is the same whatever the split sizes: child 2 of SeedSequence(5).
    child = np.random.SeedSequence(5).spawn(3)[2]
    expected = make_phantom(TINY, SPACING, rng=np.random.default_rng(child))
    assert np.array_equal(label, expected.label)
    assert np.allclose(np.asarray(image.dataobj), expected.image)
    assert entry["boxes"] == expected.boxes
    assert summary["reused"] is False and summary["replaced"] is False
    assert summary["lesions_per_case_min"] >= 1


def test_dataset_reused_when_complete_and_rewritten_when_params_change(tmp_path):
    out = tmp_path / "set"
    write_phantom_dataset(out, n_train=2, n_test=1, seed=1, shape=TINY)
    stamp = (out / "imagesTr" / "hn_000.nii.gz").stat().st_mtime_ns
    again = write_phantom_dataset(out, n_train=2, n_test=1, seed=1, shape=TINY)
    assert again["reused"] is True
    assert (out / "imagesTr" / "hn_000.nii.gz").stat().st_mtime_ns == stamp

    changed = write_phantom_dataset(out, n_train=1, n_test=1, seed=2, shape=TINY)
    assert changed["reused"] is False and changed["replaced"] is True
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["hn_000.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["hn_001.nii.gz"]


def test_dataset_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(tmp_path)):
        write_phantom_dataset(tmp_path, n_train=1, n_test=0, shape=TINY)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "imagesTr").exists()


def test_cli_makes_set_and_prints_box_dice(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "wspet.datasets.phantom", str(out), "--cases", "1",
               "--test-cases", "1", "--seed", "3", "--shape", *map(str, TINY)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "box/lesion Dice: 0." in run.stdout
    assert (out / "imagesTs" / "hn_001.nii.gz").is_file()

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already holds" in again.stdout


def test_cli_refuses_foreign_folder(tmp_path):
    (tmp_path / "scan.dcm").write_text("x")
    run = subprocess.run(
        [sys.executable, "-m", "wspet.datasets.phantom", str(tmp_path), "--cases", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert str(tmp_path) in run.stderr and "refusing" in run.stderr


def test_bad_model_parameters_raise():
    with pytest.raises(ValueError, match="noise_cov -0.1"):
        make_phantom(SMALL, rng=np.random.default_rng(0), noise_cov=-0.1)
    with pytest.raises(ValueError, match="max_lesions 0"):
        make_phantom(SMALL, rng=np.random.default_rng(0), max_lesions=0)


def test_max_lesions_caps_the_count():
    p = make_phantom(SMALL, SPACING, rng=np.random.default_rng(4), max_lesions=1)
    assert len(p.boxes) == 1 and ndimage.label(p.label, structure=FULL)[1] == 1


def test_same_arguments_same_dataset_json(tmp_path):
    write_phantom_dataset(tmp_path / "a", n_train=1, n_test=0, seed=9, shape=TINY)
    write_phantom_dataset(tmp_path / "b", n_train=1, n_test=0, seed=9, shape=TINY)
    text_a = (tmp_path / "a" / "dataset.json").read_text()
    assert text_a == (tmp_path / "b" / "dataset.json").read_text()
    assert np.array_equal(
        _load(tmp_path / "a" / "imagesTr" / "hn_000.nii.gz"),
        _load(tmp_path / "b" / "imagesTr" / "hn_000.nii.gz"),
    )
