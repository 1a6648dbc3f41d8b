from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wspet.data.boxes import box_dice
from wspet.datasets.convert import (
    case_key,
    check_frames,
    convert_dataset,
    crop_superior,
    find_cases,
    label_boxes,
    label_on_image_grid,
    main,
    read_world_boxes,
    split_cases,
    world_box_to_voxels,
)
from wspet.data.format import load_image, load_label, read_dataset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAPE = (12, 10, 16)
# The sts-fdg-pet layout: i to the patient's left, j posterior, k superior.
LPS_AFFINE = np.array([
    [-4.0, 0.0, 0.0, 20.0],
    [0.0, -4.0, 0.0, 80.0],
    [0.0, 0.0, 3.0, -300.0],
    [0.0, 0.0, 0.0, 1.0],
])


def save(path: Path, array: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def case_arrays(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.3, 1.5, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    i, j, k = 3 + seed % 4, 2 + seed % 3, 4 + seed % 5
    label[i:i + 4, j:j + 3, k:k + 5] = 1
    image[label > 0] += 5.0
    return image, label


def make_sts(root: Path, n: int = 5) -> Path:
    for number in range(1, n + 1):
        image, label = case_arrays(number)
        save(root / f"STS_{number:03d}" / "PET_image.nii.gz", image)
        save(root / f"STS_{number:03d}" / "PET_mask.nii.gz", label)
    (root / "LICENSE.md").write_text("CC BY 3.0")
    return root


def quiet(*_args) -> None:
    pass


# --------------------------------------------------------------------------- layouts


def test_sts_layout_converts_and_reads_back(tmp_path):
    src = make_sts(tmp_path / "src")
    lines: list[str] = []
    summary = convert_dataset(src, tmp_path / "out", test_fraction=0.4, seed=1, log=lines.append)

    index = read_dataset(tmp_path / "out")
    assert len(index.training) == 3 and len(index.test) == 2
    assert sorted(c.name for c in (*index.training, *index.test)) == [f"STS_00{n}" for n in range(1, 6)]
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["conversion"]["layout"] == "sts" and meta["licence"] == "see LICENSE.md of the source data"
    for case in (*index.training, *index.test):
        number = int(case.name[-3:])
        image, label = case_arrays(number)
        volume = load_image(case.image)
        assert np.array_equal(volume.array, image) and np.allclose(volume.affine, LPS_AFFINE)
        written = load_label(case.label, volume)
        assert written.dtype == np.uint8 and np.array_equal(written, label)
        i, j, k = 3 + number % 4, 2 + number % 3, 4 + number % 5
        assert case.boxes == ((i, j, k, i + 4, j + 3, k + 5),)  # tight box by default
    # A tight box around a box-shaped lesion: Dice 1.
    assert summary["box_dice_mean"] == pytest.approx(1.0) and summary["box_dice_std"] == pytest.approx(0.0)
    assert "box/label Dice 1.000 +- 0.000" in lines[-1]


def test_hecktor_layout_pairs_flat_files_and_merges_label_values(tmp_path):
    src = tmp_path / "hecktor" / "hecktor_nii"
    for name in ("CHGJ007", "CHUM010"):
        image, label = case_arrays(len(name))
        label[0:2, 0:2, 0:2] = 2  # a second structure value: still lesion
        save(src / f"{name}_pt.nii.gz", image)
        save(src / f"{name}_ct.nii.gz", image)  # CT is ignored
        save(src / f"{name}_gtvt.nii.gz", label)
    cases = find_cases(tmp_path / "hecktor")
    assert [c.name for c in cases] == ["CHGJ007", "CHUM010"]
    assert cases[0].label.name == "CHGJ007_gtvt.nii.gz"
    convert_dataset(tmp_path / "hecktor", tmp_path / "out", test_fraction=0.5, log=quiet)
    index = read_dataset(tmp_path / "out")
    case = index.training[0]
    label = load_label(case.label, load_image(case.image))
    assert set(np.unique(label)) == {0, 1} and label[0, 0, 0] == 1
    assert len(case.boxes) == 2  # two lesions, two boxes


def test_case_names_from_wildcards_or_folder():
    assert case_key(Path("a/STS_001/PET_image.nii.gz"), "*/PET_image.nii.gz") == "STS_001"
    assert case_key(Path("x/CHGJ007_pt.nii.gz"), "**/*_pt.nii.gz") == "CHGJ007"
    assert case_key(Path("img_p01_suv.nii.gz"), "img_*_suv.nii.gz") == "p01"
    assert case_key(Path("scan7.nii.gz"), "scan?.nii.gz") == "7"


def test_glob_layout_pairs_by_name(tmp_path):
    src = tmp_path / "src"
    for name in ("p1", "p2", "p3"):
        image, label = case_arrays(int(name[1]))
        save(src / "images" / f"{name}.nii.gz", image)
        save(src / "masks" / f"{name}_seg.nii.gz", label)
    cases = find_cases(src, image_glob="images/*.nii.gz", label_glob="masks/*_seg.nii.gz")
    assert [(c.name, c.label.name) for c in cases] == [("p1", "p1_seg.nii.gz"), ("p2", "p2_seg.nii.gz"),
                                                       ("p3", "p3_seg.nii.gz")]
    (src / "masks" / "p3_seg.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"p3\.nii\.gz: no label"):
        find_cases(src, image_glob="images/*.nii.gz", label_glob="masks/*_seg.nii.gz")
    with pytest.raises(ValueError, match="cannot tell the layout"):
        find_cases(src)


# --------------------------------------------------------------------------- grids


def test_label_on_a_coarser_shifted_grid_is_resampled_by_nearest_neighbour():
    # Image: 1 mm voxels at 0..7 mm. Label: 2 mm voxels centred at 0.5, 2.5, ... so image voxel i
    # lies at label coordinate i/2 - 0.25, nearest label voxel floor(i/2): each label voxel
    # covers two image voxels per axis.
    rng = np.random.default_rng(0)
    coarse = (rng.random((4, 4, 4)) < 0.5).astype(np.uint8)
    label_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    label_affine[:3, 3] = 0.5
    resampled, changed = label_on_image_grid(coarse, label_affine, (8, 8, 8), np.eye(4))
    expected = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert changed and resampled.dtype == np.uint8
    assert np.array_equal(resampled, expected)


def test_label_stored_with_permuted_flipped_axes_maps_back_exactly():
    _, label = case_arrays(2)
    # The same grid written with axes (k, i, j) and i reversed: a different file layout only.
    stored = np.transpose(label[::-1], (2, 0, 1))
    index_of_stored = np.array([  # stored voxel (k, i', j) -> image voxel (SHAPE[0]-1-i', j, k)
        [0.0, -1.0, 0.0, SHAPE[0] - 1],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    resampled, changed = label_on_image_grid(stored, LPS_AFFINE @ index_of_stored, SHAPE, LPS_AFFINE)
    assert changed and np.array_equal(resampled, label)


def test_conversion_resamples_a_label_on_another_grid(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    _, label = case_arrays(1)
    fine = label.repeat(2, axis=2)  # the same lesion on 1.5 mm slices, centred on the image's
    fine_affine = LPS_AFFINE @ np.diag([1.0, 1.0, 0.5, 1.0])
    fine_affine[:3, 3] = (LPS_AFFINE @ [0, 0, -0.25, 1])[:3]
    save(src / "STS_001" / "PET_mask.nii.gz", fine, fine_affine)
    summary = convert_dataset(src, tmp_path / "out", test_fraction=0.0, log=quiet)
    assert summary["resampled"] == ["STS_001"]
    case = read_dataset(tmp_path / "out").training[0]
    assert np.array_equal(load_label(case.label, load_image(case.image)), label)


def rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def test_rotated_or_disjoint_label_grids_are_refused(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    _, label = case_arrays(2)
    save(src / "STS_002" / "PET_mask.nii.gz", label, rotation_z(10) @ LPS_AFFINE)
    with pytest.raises(ValueError, match=r"STS_002/PET_mask\.nii\.gz: label grid is rotated by 10\.00 degrees .*STS_002/PET_image"):
        convert_dataset(src, tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()  # refused from the headers, before writing anything
    shifted = LPS_AFFINE.copy()
    shifted[2, 3] += 1000.0
    with pytest.raises(ValueError, match=r"label extent .* does not overlap the extent"):
        check_frames(LPS_AFFINE, SHAPE, shifted, SHAPE, "img.nii.gz", "lab.nii.gz")
    # A tiny rotation (scanner round-off) is accepted.
    check_frames(LPS_AFFINE, SHAPE, rotation_z(0.1) @ LPS_AFFINE, SHAPE)


def test_lesion_outside_the_image_is_refused():
    label = np.zeros((6, 6, 6), np.uint8)
    label[5, 5, 5] = 1
    moved = np.eye(4)
    moved[:3, 3] = 3.0  # overlaps the image's extent, but the lesion voxel (8, 8, 8 mm) lies outside it
    with pytest.raises(ValueError, match="none of its 1 lesion voxels lies inside"):
        label_on_image_grid(label, moved, (6, 6, 6), np.eye(4), "img", "lab")


# --------------------------------------------------------------------------- boxes


def test_world_mm_box_maps_to_the_voxels_it_covers():
    # Voxels i 2..4, j 1..3, k 3..5 of LPS_AFFINE: their outer edges in RAS mm.
    corner_a = LPS_AFFINE @ [1.5, 0.5, 2.5, 1]
    corner_b = LPS_AFFINE @ [4.5, 3.5, 5.5, 1]
    box = [*corner_a[:3], *corner_b[:3]]
    assert world_box_to_voxels(box, LPS_AFFINE, SHAPE) == [2, 1, 3, 5, 4, 6]
    # Voxel centres as corners, a clinician's click on the voxels, give the same box.
    centres = [*(LPS_AFFINE @ [2, 1, 3, 1])[:3], *(LPS_AFFINE @ [4, 3, 5, 1])[:3]]
    assert world_box_to_voxels(centres, LPS_AFFINE, SHAPE) == [2, 1, 3, 5, 4, 6]
    # An edge 0.4 voxel into voxel 1 takes voxel 1 too (rounded outward).
    inside = [*(LPS_AFFINE @ [1.1, 1, 3, 1])[:3], *(LPS_AFFINE @ [4, 3, 5, 1])[:3]]
    assert world_box_to_voxels(inside, LPS_AFFINE, SHAPE) == [1, 1, 3, 5, 4, 6]


def test_world_box_partly_outside_is_clipped_with_a_warning_and_mostly_outside_refused():
    box = [*(LPS_AFFINE @ [9, 1, 3, 1])[:3], *(LPS_AFFINE @ [12, 3, 5, 1])[:3]]  # i 9..12, volume ends at 11
    with pytest.warns(UserWarning, match=r"clipped to the volume \(12, 10, 16\) as \[9, 1, 3, 12, 4, 6\]"):
        assert world_box_to_voxels(box, LPS_AFFINE, SHAPE, "c box 0") == [9, 1, 3, 12, 4, 6]
    far = [*(LPS_AFFINE @ [10, 1, 3, 1])[:3], *(LPS_AFFINE @ [20, 3, 5, 1])[:3]]
    with pytest.raises(ValueError, match=r"c box 0 .* only 18% inside"):
        world_box_to_voxels(far, LPS_AFFINE, SHAPE, "c box 0")


def test_boxes_file_in_ras_or_lps_sets_the_boxes(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    a, b = LPS_AFFINE @ [1.5, 0.5, 2.5, 1], LPS_AFFINE @ [4.5, 3.5, 5.5, 1]
    c = LPS_AFFINE @ [4, 3, 5, 1]  # a point box: the voxel holding it
    ras = tmp_path / "boxes.csv"
    ras.write_text("case,x0,y0,z0,x1,y1,z1,reader\n"
                   f"STS_001,{a[0]},{a[1]},{a[2]},{b[0]},{b[1]},{b[2]},dr x\n"
                   f"STS_002,{a[0]},{a[1]},{a[2]},{b[0]},{b[1]},{b[2]},dr x\n"
                   f"STS_002,{c[0]},{c[1]},{c[2]},{c[0]},{c[1]},{c[2]},dr y\n")
    lines: list[str] = []
    summary = convert_dataset(src, tmp_path / "out", test_fraction=0.0, boxes_file=ras, log=lines.append)
    index = read_dataset(tmp_path / "out")
    assert [c.boxes for c in index.training] == [((2, 1, 3, 5, 4, 6),), ((2, 1, 3, 5, 4, 6), (4, 3, 5, 5, 4, 6))]
    _, label = case_arrays(1)
    assert summary["box_dice"]["STS_001"] == pytest.approx(box_dice([[2, 1, 3, 5, 4, 6]], label))
    assert "box/label Dice" in lines[-1]

    lps = tmp_path / "boxes.json"
    flip = np.array([-1, -1, 1])
    lps.write_text(json.dumps({"STS_001": [[*(a[:3] * flip), *(b[:3] * flip)]],
                               "STS_002": [[*(a[:3] * flip), *(b[:3] * flip)]]}))
    assert read_world_boxes(lps, lps=True)["STS_001"][0] == pytest.approx([*a[:3], *b[:3]])
    convert_dataset(src, tmp_path / "out_lps", boxes_file=lps, boxes_lps=True, test_fraction=0.0, log=quiet)
    assert read_dataset(tmp_path / "out_lps").training[0].boxes == ((2, 1, 3, 5, 4, 6),)


def test_boxes_file_problems_are_named(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("case,x0,y0,z0,x1,y1\nSTS_001,1,2,3,4,5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: CSV header .* lacks columns \['z1'\]"):
        read_world_boxes(bad)
    bad.write_text("case,x0,y0,z0,x1,y1,z1\nSTS_001,1,2,3,4,5,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 2: .*'oops'"):
        read_world_boxes(bad)
    nested = tmp_path / "nested.json"
    nested.write_text('{"STS_001": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=r"nested\.json: not valid JSON: nested too deeply"):
        read_world_boxes(nested)
    bad.write_text("case,x0,y0,z0,x1,y1,z1\nSTS_009,1,2,3,4,5,6\n")
    with pytest.raises(ValueError, match=r"cases \['STS_009'\] are not in .*cases \['STS_001', 'STS_002'\] have no boxes"):
        convert_dataset(src, tmp_path / "out", boxes_file=bad, log=quiet)
    with pytest.raises(ValueError, match="margins and scales apply to label-derived boxes only"):
        convert_dataset(src, tmp_path / "out", boxes_file=bad, box_margin_mm=5.0, log=quiet)


def test_margin_in_mm_and_scale_rules():
    label = np.zeros((20, 20, 20), np.uint8)
    label[8:11, 8:11, 8:11] = 1  # tight box [8, 11) on every axis
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    # 5 mm margin: ceil(5/2) = 3, ceil(5/2.5) = 2, ceil(5/3) = 2 voxels a side.
    assert label_boxes(label, affine, margin_mm=5.0) == [[5, 6, 6, 14, 13, 13]]
    # Scale 2: extent 3 -> 6, one voxel before and two after (the odd voxel goes to the stop side).
    assert label_boxes(label, affine, scale=2.0) == [[7, 7, 7, 13, 13, 13]]
    with pytest.raises(ValueError, match=r"--box-margin-mm -1\.0"):
        label_boxes(label, affine, margin_mm=-1.0)


def test_margin_reaches_the_dataset(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    convert_dataset(src, tmp_path / "out", box_margin_mm=4.0, test_fraction=0.0, log=quiet)
    box = read_dataset(tmp_path / "out").training[0].boxes[0]
    i, j, k = 3 + 1 % 4, 2 + 1 % 3, 4 + 1 % 5  # case 1's lesion; 4 mm = 1 voxel in-plane, 2 slices of 3 mm
    assert box == (i - 1, j - 1, k - 2, i + 5, j + 4, k + 7)


# --------------------------------------------------------------------------- cropping and splits


def test_crop_keeps_the_top_slices_and_the_world_positions():
    image, label = case_arrays(3, shape=(6, 5, 20))
    cropped, cropped_label, affine, dropped = crop_superior(image, label, LPS_AFFINE, keep_mm=30.0)
    assert cropped.shape == (6, 5, 10) and dropped == 10  # 30 mm / 3 mm slices
    assert np.array_equal(cropped, image[:, :, 10:]) and np.array_equal(cropped_label, label[:, :, 10:])
    assert np.allclose(affine @ [1, 2, 0, 1], LPS_AFFINE @ [1, 2, 10, 1])
    # Slices stored top-down (k inferior): the top is k = 0 and the affine is unchanged.
    downward = LPS_AFFINE @ np.diag([1.0, 1.0, -1.0, 1.0])
    cropped, _, affine, _ = crop_superior(image, label, downward, keep_mm=31.0)
    assert np.array_equal(cropped, image[:, :, :10]) and np.allclose(affine, downward)
    # Not taller than asked: nothing dropped.
    assert crop_superior(image, label, LPS_AFFINE, keep_mm=500.0)[3] == 0


def test_crop_option_in_the_conversion(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    summary = convert_dataset(src, tmp_path / "out", crop_superior_mm=24.0, test_fraction=0.0, log=quiet)
    assert summary["cropped"] == ["STS_001", "STS_002"]
    case = read_dataset(tmp_path / "out").training[0]
    volume = load_image(case.image)
    assert volume.array.shape == (12, 10, 8)
    assert volume.affine[2, 3] == pytest.approx(-300.0 + 8 * 3.0)
    # Case 1's lesion spans k 5..9; the top 8 slices (k 8..15) keep k 8 and 9.
    assert case.boxes == ((4, 3, 0, 8, 6, 2),)


def test_split_is_seeded_and_sized():
    names = [f"c{n:02d}" for n in range(10)]
    train, test = split_cases(names, 0.25, seed=4)
    assert len(test) == 3 and len(train) == 7 and sorted(train + test) == names
    assert split_cases(names, 0.25, seed=4) == (train, test)
    assert any(split_cases(names, 0.25, seed=s)[1] != test for s in range(5, 10))
    assert len(split_cases(names[:3], 0.01, seed=0)[1]) == 1  # at least one test case
    assert len(split_cases(names[:3], 0.99, seed=0)[0]) == 1  # at least one training case
    assert split_cases(names, 0.0, seed=0) == (names, [])
    with pytest.raises(ValueError, match=r"--test-fraction 1\.5"):
        split_cases(names, 1.5, seed=0)


def test_weak_training_entries_keep_boxes_only(tmp_path):
    src = make_sts(tmp_path / "src", n=4)
    convert_dataset(src, tmp_path / "out", weak=True, test_fraction=0.25, log=quiet)
    index = read_dataset(tmp_path / "out")
    assert all(c.label is None and c.boxes for c in index.training) and len(index.training) == 3
    assert all(c.label is not None for c in index.test)
    assert not (tmp_path / "out" / "labelsTr").exists()


# --------------------------------------------------------------------------- output folder and CLI


def test_non_empty_out_is_refused_unless_overwrite(tmp_path):
    src = make_sts(tmp_path / "src", n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"out: not empty .*notes\.txt.*--overwrite"):
        convert_dataset(src, out, log=quiet)
    with pytest.raises(ValueError, match=r"holds .*notes\.txt, which a conversion does not write"):
        convert_dataset(src, out, overwrite=True, log=quiet)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()

    convert_dataset(src, out, test_fraction=0.0, log=quiet)
    with pytest.raises(ValueError, match="not empty"):
        convert_dataset(src, out, log=quiet)
    convert_dataset(src, out, overwrite=True, test_fraction=0.0, cases=["STS_002"], log=quiet)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["STS_002.nii.gz"]  # stale cases removed
    assert [c.name for c in read_dataset(out).training] == ["STS_002"]
    with pytest.raises(ValueError, match="overlaps the source folder"):
        convert_dataset(src, src / "converted", log=quiet)
    assert sorted(p.name for p in src.iterdir()) == ["LICENSE.md", "STS_001", "STS_002", "STS_003"]


def make_hecktor(src: Path, names=("CHGJ007", "CHUM010")) -> Path:
    for name in names:
        image, label = case_arrays(len(name))
        save(src / f"{name}_pt.nii.gz", image)
        save(src / f"{name}_gtvt.nii.gz", label)
    return src


def test_overwrite_never_deletes_through_a_symlinked_split_folder(tmp_path):
    src = make_sts(tmp_path / "src", n=3)
    out = tmp_path / "out"
    convert_dataset(src, out, test_fraction=0.0, log=quiet)
    other = tmp_path / "other"
    save(other / "unrelated.nii.gz", np.ones((2, 2, 2), np.float32))
    shutil.rmtree(out / "imagesTr")
    (out / "imagesTr").symlink_to(other)
    with pytest.raises(ValueError, match=r"out/imagesTr: is a symbolic link to .*other; --overwrite never deletes"):
        convert_dataset(src, out, overwrite=True, test_fraction=0.0, log=quiet)
    assert (other / "unrelated.nii.gz").is_file()
    flat = make_hecktor(tmp_path / "flat")
    (out / "imagesTr").unlink()
    (out / "imagesTr").symlink_to(flat)
    with pytest.raises(ValueError, match=r"is a symbolic link to .*flat \(inside the source folder\)"):
        convert_dataset(flat, out, overwrite=True, log=quiet)
    assert sorted(p.name for p in flat.iterdir()) == [
        "CHGJ007_gtvt.nii.gz", "CHGJ007_pt.nii.gz", "CHUM010_gtvt.nii.gz", "CHUM010_pt.nii.gz"]


def test_symlinked_files_or_out_folder_are_refused(tmp_path):
    src = make_sts(tmp_path / "src", n=2)
    out = tmp_path / "out"
    convert_dataset(src, out, test_fraction=0.0, log=quiet)
    keep = save(tmp_path / "keep.nii.gz", np.ones((2, 2, 2), np.float32))
    (out / "imagesTr" / "linked.nii.gz").symlink_to(keep)
    with pytest.raises(ValueError, match=r"linked.nii.gz: is a symbolic link"):
        convert_dataset(src, out, overwrite=True, test_fraction=0.0, log=quiet)
    (out / "imagesTr" / "linked.nii.gz").unlink()
    alias = tmp_path / "alias"
    alias.symlink_to(out)
    with pytest.raises(ValueError, match=r"alias: is a symbolic link to .*out; give the folder itself"):
        convert_dataset(src, alias, overwrite=True, test_fraction=0.0, log=quiet)
    assert keep.is_file() and [c.name for c in read_dataset(out).training] == ["STS_001", "STS_002"]


def test_an_interrupted_overwrite_keeps_the_earlier_set(tmp_path, monkeypatch):
    import wspet.datasets.convert as convert

    src = make_sts(tmp_path / "src", n=3)
    out = tmp_path / "out"
    convert_dataset(src, out, test_fraction=0.0, log=quiet)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    written = []

    def interrupted(case, folder, split, keep_label):
        if written:
            raise KeyboardInterrupt  # Ctrl-C while the second case is written
        written.append(case.name)
        return original(case, folder, split, keep_label)

    original = convert._write_case
    monkeypatch.setattr(convert, "_write_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(src, out, overwrite=True, test_fraction=0.0, cases=["STS_002", "STS_003"], log=quiet)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [c.name for c in read_dataset(out).training] == ["STS_001", "STS_002", "STS_003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left
    monkeypatch.setattr(convert, "_write_case", original)
    convert_dataset(src, out, overwrite=True, test_fraction=0.0, cases=["STS_003"], log=quiet)
    assert [c.name for c in read_dataset(out).training] == ["STS_003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_cli_reports_dice_and_errors(tmp_path, capsys):
    src = make_sts(tmp_path / "src", n=3)
    assert main([str(src), str(tmp_path / "out"), "--layout", "sts", "--weak", "--limit", "2",
                 "--box-scale", "2"]) == 0
    output = capsys.readouterr().out
    assert "1 training + 1 test cases; box/label Dice 0.222 +- 0.000" in output  # lesion 60 voxels, box 8x: 2*60/540
    assert main([str(src), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATA / "sts-fdg-pet").is_dir(),
                    reason=f"real data folder {SHARED_DATA / 'sts-fdg-pet'} is absent")
def test_real_sts_cases_convert(tmp_path):
    src = SHARED_DATA / "sts-fdg-pet"
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = convert_dataset(src, tmp_path / "sts", layout="sts", weak=True, limit=4, log=lines.append)
    print("\n".join(lines))
    index = read_dataset(tmp_path / "sts")
    assert len(index.training) + len(index.test) == 4 and len(index.test) == 1
    # The README's figure for the tight box over all 36 patients is about 0.57.
    assert 0.45 < summary["box_dice_mean"] < 0.7
    source = nib.load(str(src / index.training[0].name / "PET_image.nii.gz"))
    copied = load_image(index.training[0].image)
    assert np.array_equal(copied.array, np.asarray(source.dataobj, dtype=np.float32))
    assert np.allclose(copied.affine, source.affine)


# --------------------------------------------------------------------------- DICOM series + DICOM SEG


def dicom_seg_case(root: Path, name: str, seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """``root/name/`` as a TCIA download holds it: a PET series folder and a folder of two SEG files.

    Returns the series folder and the masks of the SEGs' segments "GTV primary" and "GTV node".
    """
    from tests.datasets.test_seg import SHAPE as SEG_SHAPE
    from tests.datasets.test_seg import box_mask, rewrite_series
    from tests.inference.test_predict import dicom_raw, write_dicom_series
    from wspet.datasets.seg import write_seg

    series = write_dicom_series(root / name / "1-PET AC" / "pet", dicom_raw(SEG_SHAPE) + seed)
    rewrite_series(series, StudyInstanceUID=f"1.2.3.{seed}", PatientName="Doe^Jane", PatientBirthDate="",
                   PatientSex="O", StudyID="1", StudyDate="20200101", StudyTime="110000", AccessionNumber="",
                   ReferringPhysicianName="", SeriesNumber=3, InstanceNumber=1)
    primary, node = box_mask(2, 5, 2, 5 + seed, 1, 3), box_mask(10, 14, 8, 12, 6, 9)
    write_seg(primary, series, root / name / "2-SEG" / "1-1.dcm", label="GTV primary", automatic=False)
    write_seg(node, series, root / name / "2-SEG" / "1-2.dcm", label="GTV node", automatic=False)
    return series, primary, node


def test_dicom_seg_layout_reads_the_chosen_segments_onto_the_series_grid(tmp_path, capsys):
    from wspet.datasets.dicom import read_pet_series

    cases = {name: dicom_seg_case(tmp_path / "src", name, seed) for seed, name in enumerate(["HN-01", "HN-02"])}
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--layout", "dicom-seg", "--segments", "GTV primary",
                 "--test-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed[:2]] == ["[1/2] HN-01", "[2/2] HN-02"]  # progress per case
    assert "1 training + 1 test cases" in printed[-1]  # and a summary
    index = read_dataset(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["conversion"]["segments"] == ["GTV primary"]
    assert meta["conversion"]["cases"]["HN-01"]["segs"] == ["HN-01/2-SEG/1-1.dcm", "HN-01/2-SEG/1-2.dcm"]
    for case in (*index.training, *index.test):
        series, primary, _ = cases[case.name]
        pet = read_pet_series(series)
        volume = load_image(case.image)
        assert np.allclose(volume.array, pet.suv) and np.allclose(volume.affine, pet.affine)
        assert np.array_equal(load_label(case.label, volume), primary)


def test_dicom_seg_layout_takes_every_segment_by_default(tmp_path):
    _, primary, node = dicom_seg_case(tmp_path / "src", "HN-01", 0)
    convert_dataset(tmp_path / "src", tmp_path / "out", layout="dicom-seg", test_fraction=1.0, log=quiet)
    case = read_dataset(tmp_path / "out").test[0]
    assert np.array_equal(load_label(case.label, load_image(case.image)), primary | node)


def test_dicom_seg_layout_refusals_name_the_file(tmp_path):
    dicom_seg_case(tmp_path / "src", "HN-01", 0)
    with pytest.raises(ValueError, match=r"\['Lymph node'\] not found; the SEG files have .*1-1\.dcm: 1 'GTV primary'"):
        convert_dataset(tmp_path / "src", tmp_path / "out", layout="dicom-seg", segments=["Lymph node"], log=quiet)
    with pytest.raises(ValueError, match=r"--segments \['1'\]: only with --layout dicom-seg"):
        convert_dataset(tmp_path / "src", tmp_path / "out", segments=["1"], log=quiet)
    shutil.rmtree(tmp_path / "src" / "HN-01" / "1-PET AC")
    with pytest.raises(ValueError, match=r"2-SEG/1-1\.dcm: references series [\d.]+, which is not in .*HN-01"):
        convert_dataset(tmp_path / "src", tmp_path / "out", layout="dicom-seg", log=quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "sts-fdg-pet-dicom" / "STS_001").is_dir(), reason="shared data absent")
def test_dicom_seg_layout_converts_sts_001_with_its_gtv_as_seg(tmp_path):
    from wspet.datasets.dicom import read_pet_series
    from wspet.datasets.rtstruct import rasterise_roi
    from wspet.datasets.seg import write_seg

    source = SHARED_DATA / "sts-fdg-pet-dicom" / "STS_001" / "FDG_PET"
    shutil.copytree(source / "image", tmp_path / "src" / "STS_001" / "PET")
    pet = read_pet_series(source / "image")
    gtv = rasterise_roi(source / "mask" / "1-1.dcm", "GTV_Mass", pet)
    write_seg(gtv, source / "image", tmp_path / "src" / "STS_001" / "SEG" / "1-1.dcm", label="GTV_Mass", automatic=False)
    summary = convert_dataset(tmp_path / "src", tmp_path / "out", layout="dicom-seg", test_fraction=1.0, log=quiet)
    case = read_dataset(tmp_path / "out").test[0]
    volume = load_image(case.image)
    assert np.array_equal(load_label(case.label, volume), gtv) and np.allclose(volume.array, pet.suv)
    assert summary["test"] == ["STS_001"] and len(case.boxes) == 1
