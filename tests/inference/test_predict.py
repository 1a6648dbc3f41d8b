"""predict.py: every input form (NIfTI, folders, datasets, DICOM series), the outputs (mask with the
input's affine, lesion CSV, MIP picture, SUV volume), and refusal to overwrite any of them."""

import csv
import functools
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from omegaconf import OmegaConf
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

import wspet.inference.predict
from wspet.inference.measurements import LESION_COLUMNS
from wspet.model.module import LesionSegmenter
from wspet.inference.predict import find_inputs, plan_jobs, predict

REPO = Path(__file__).resolve().parents[2]
AFFINE = np.array([[-4.0, 0, 0, 100.0], [0, -4.0, 0, 80.0], [0, 0, 3.27, -500.0], [0, 0, 0, 1]])


def untrained_checkpoint(path: Path, seed: int) -> Path:
    """A small untrained U-Net saved as train.py saves one; other seeds give other weights."""
    import lightning as L

    torch.manual_seed(seed)
    model = LesionSegmenter(net={"features": [4, 8, 16]}, loss={"_target_": "wspet.losses.DiceLoss"})
    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", seed=0)


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory) -> Path:
    """An ensemble's second member: the same network, other weights."""
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "second.ckpt", seed=1)


@pytest.fixture
def scan(tmp_path) -> Path:
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(20, 24, 18)).astype(np.float32)
    path = tmp_path / "inputs" / "patient 1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image, AFFINE), path)
    return path


def predict_config(checkpoint, input_path, output, **extra):
    return OmegaConf.create({
        "ckpt": str(checkpoint), "input": str(input_path), "split": "test", "output": str(output),
        "overwrite": False, "lesions_csv": True, "mip_png": True, "save_suv": False,
        "window": [16, 16, 16], "overlap": [4, 4, 4], "batch_size": 2,
        "threshold": 0.5, "device": "cpu", "postprocess": {"name": "none", "fn": None}, **extra,
    })


# A tiny DICOM PET series. ADMIN decay correction: SUV = stored value x weight / dose, here / 1000.
DICOM_SPACING = (4.0, 4.0, 3.0)  # column, row, slice spacing in mm
DICOM_ORIGIN = (-20.0, -30.0, 100.0)  # LPS mm of the first voxel


def write_dicom_series(folder: Path, raw: np.ndarray, patient_id: str | None = "PT 7/a", suffix: str = ".dcm") -> Path:
    """One PET slice file per k of ``raw`` (I, J, K) = (columns, rows, slices), int16 stored values."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for k in range(raw.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = "PT"
        if patient_id is not None:
            ds.PatientID = patient_id
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, "1.2.3.4"
        ds.SeriesDate, ds.SeriesTime = "20200101", "113000"
        ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "ADMIN", 70.0
        radio = Dataset()
        radio.RadionuclideTotalDose = 7.0e7
        ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [DICOM_ORIGIN[0], DICOM_ORIGIN[1], DICOM_ORIGIN[2] + DICOM_SPACING[2] * k]
        ds.PixelSpacing = [DICOM_SPACING[1], DICOM_SPACING[0]]  # row spacing, column spacing
        ds.SliceThickness = DICOM_SPACING[2]
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
        plane = np.ascontiguousarray(raw[:, :, k].T.astype("<i2"))  # (rows, columns)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"{k:04d}{suffix}", enforce_file_format=True)
    return folder


def dicom_raw(shape=(20, 18, 12)) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 4000, size=shape).astype(np.int16)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def red_pixels(png: Path) -> int:
    """Pixels of the lesion outline colour (#e41a1c): the grey MIP and black text have none."""
    rgb = matplotlib.image.imread(png)[..., :3]
    return int(np.count_nonzero((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)))


# --------------------------------------------------------------------------- NIfTI inputs


def test_mask_keeps_the_input_affine_and_shape(checkpoint, scan, tmp_path):
    written = predict(predict_config(checkpoint, scan, tmp_path / "out"))
    assert [p.name for p in written] == ["patient 1_mask.nii.gz", "patient 1_lesions.csv", "patient 1_mip.png"]
    mask = nib.load(written[0])
    source = nib.load(scan)
    assert mask.shape == source.shape
    assert np.allclose(mask.affine, source.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    columns, rows = read_csv(written[1])
    assert columns == ["case", *LESION_COLUMNS]
    assert {row["case"] for row in rows} <= {"patient 1"}
    assert sum(int(row["n_voxels"]) for row in rows) == int(np.asarray(mask.dataobj).sum())
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_mask_when_the_extras_are_off(checkpoint, scan, tmp_path):
    cfg = predict_config(checkpoint, scan, tmp_path / "out", lesions_csv=False, mip_png=False, save_suv=True)
    written = predict(cfg)
    assert [p.name for p in written] == ["patient 1_mask.nii.gz"]  # save_suv: DICOM inputs only
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["patient 1_mask.nii.gz"]


def test_lesion_csv_and_mip_of_a_known_mask(checkpoint, tmp_path, monkeypatch):
    suv = np.ones((20, 24, 18), np.float32)
    suv[2:4, 2:4, 2:4] = 5.0
    suv[3, 3, 3] = 9.0
    suv[15, 18, 12] = 3.0
    path = tmp_path / "known.nii.gz"
    nib.save(nib.Nifti1Image(suv, AFFINE), path)
    known = np.zeros(suv.shape, bool)
    known[2:4, 2:4, 2:4] = True
    known[15, 18, 12] = True
    monkeypatch.setattr(wspet.inference.predict, "predict_mask", lambda *args, **kwargs: known)
    written = predict(predict_config(checkpoint, path, tmp_path / "out"))
    columns, rows = read_csv(tmp_path / "out" / "known_lesions.csv")
    assert columns == ["case", *LESION_COLUMNS]
    voxel_ml = 4.0 * 4.0 * 3.27 / 1000
    cube, dot = rows
    assert cube["case"] == dot["case"] == "known"
    assert (int(cube["lesion"]), int(cube["n_voxels"]), int(dot["n_voxels"])) == (1, 8, 1)
    assert float(cube["volume_ml"]) == pytest.approx(8 * voxel_ml)
    assert (float(cube["suv_max"]), float(cube["suv_mean"])) == pytest.approx((9.0, 5.5))
    assert float(cube["tlg"]) == pytest.approx(5.5 * 8 * voxel_ml)
    assert [int(cube[c]) for c in ("i0", "j0", "k0", "i1", "j1", "k1")] == [2, 2, 2, 4, 4, 4]
    assert [int(cube[c]) for c in ("peak_i", "peak_j", "peak_k")] == [3, 3, 3]
    centre = AFFINE @ [2.5, 2.5, 2.5, 1]
    assert [float(cube[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx(centre[:3].tolist())
    assert (float(dot["suv_max"]), float(dot["volume_ml"])) == pytest.approx((3.0, voxel_ml))
    assert nib.load(written[0]).get_fdata().sum() == 9
    assert red_pixels(tmp_path / "out" / "known_mip.png") > 10  # the outlines are drawn

    monkeypatch.setattr(wspet.inference.predict, "predict_mask", lambda *args, **kwargs: np.zeros(suv.shape, bool))
    predict(predict_config(checkpoint, path, tmp_path / "empty"))
    columns, rows = read_csv(tmp_path / "empty" / "known_lesions.csv")
    assert (columns, rows) == (["case", *LESION_COLUMNS], [])  # the header, with its case column
    assert red_pixels(tmp_path / "empty" / "known_mip.png") == 0


def test_refuses_to_overwrite_unless_asked(checkpoint, scan, tmp_path):
    cfg = predict_config(checkpoint, scan, tmp_path / "out")
    predict(cfg)
    with pytest.raises(FileExistsError, match="exists"):
        predict(cfg)
    cfg.overwrite = True
    assert len(predict(cfg)) == 3


@pytest.mark.parametrize("existing, option", [("a_lesions.csv", "lesions_csv"), ("a_mip.png", "mip_png")])
def test_overwrite_refusal_covers_the_csv_and_the_png(tmp_path, existing, option):
    source = tmp_path / "a.nii.gz"
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("an earlier result")
    with pytest.raises(FileExistsError, match=rf"{existing}: exists \(pass overwrite=true"):
        plan_jobs([("a", source)], out, overwrite=False)
    assert plan_jobs([("a", source)], out, overwrite=False, **{option: False})  # not written: no conflict
    assert (out / existing).read_text() == "an earlier result"


def test_overwrite_refusal_covers_the_suv_of_a_dicom_input(tmp_path):
    series = write_dicom_series(tmp_path / "series", dicom_raw((4, 4, 2)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "PT_7_a_suv.nii.gz").write_bytes(b"")
    inputs = find_inputs(series)
    with pytest.raises(FileExistsError, match=r"PT_7_a_suv.nii.gz: exists"):
        plan_jobs(inputs, out, overwrite=False, save_suv=True)
    (job,) = plan_jobs(inputs, out, overwrite=False, save_suv=False)
    assert job.suv is None and job.is_dicom


def test_refuses_to_write_over_an_input(tmp_path):
    source = tmp_path / "a_mask.nii.gz"
    source.write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite an input"):
        plan_jobs([("a", source)], tmp_path, overwrite=True)


def test_refuses_two_inputs_with_one_case_name(tmp_path):
    inputs = [("a", tmp_path / "a.nii"), ("a", tmp_path / "a.nii.gz")]
    with pytest.raises(FileExistsError, match=r"a_mask.nii.gz: two inputs are case 'a': \S*a.nii and \S*a.nii.gz"):
        plan_jobs(inputs, tmp_path / "out", overwrite=True)


def test_inputs_from_a_folder_and_a_dataset(tiny_dataset, scan, tmp_path):
    assert [name for name, _ in find_inputs(scan.parent)] == ["patient 1"]
    assert [name for name, _ in find_inputs(tiny_dataset, "test")] == ["hn_006", "hn_007"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no NIfTI files, DICOM files or dataset.json"):
        find_inputs(empty)


# --------------------------------------------------------------------------- DICOM inputs


def test_a_dicom_series_folder_is_one_case_named_by_its_patient_id(tmp_path):
    series = write_dicom_series(tmp_path / "image", dicom_raw((4, 4, 3)))
    assert find_inputs(series) == [("PT_7_a", series)]  # "PT 7/a" made a file name


def test_dicom_files_without_a_suffix_are_found_by_their_preamble(tmp_path):
    series = write_dicom_series(tmp_path / "series", dicom_raw((4, 4, 3)), patient_id=None, suffix="")
    (series / "README").write_text("not DICOM")  # sorted after the slices: never probed
    assert find_inputs(series) == [("series", series)]  # no PatientID: the folder's name


def test_a_dicom_file_or_a_mixed_folder_is_refused(tmp_path, scan):
    series = write_dicom_series(tmp_path / "series", dicom_raw((4, 4, 3)))
    with pytest.raises(ValueError, match=r"0000.dcm: a single DICOM file; pass the folder of its series"):
        find_inputs(series / "0000.dcm")
    (series / "suv.nii.gz").write_bytes(scan.read_bytes())
    with pytest.raises(ValueError, match=r"series: holds both NIfTI files \(1, e.g. suv.nii.gz\) and DICOM files \(3"):
        find_inputs(series)


def test_predict_on_a_dicom_series(checkpoint, tmp_path):
    raw = dicom_raw()
    series = write_dicom_series(tmp_path / "dicom" / "image", raw)
    written = predict(predict_config(checkpoint, series, tmp_path / "out", save_suv=True))
    suffixes = ["mask.nii.gz", "suv.nii.gz", "lesions.csv", "mip.png"]
    assert [p.name for p in written] == [f"PT_7_a_{suffix}" for suffix in suffixes]
    # LPS origin (-20, -30, 100) -> RAS (20, 30, 100); columns along -x, rows along -y, slices along +z
    expected_affine = np.array([[-4.0, 0, 0, 20], [0, -4.0, 0, 30], [0, 0, 3.0, 100], [0, 0, 0, 1]])
    mask, suv = nib.load(written[0]), nib.load(written[1])
    assert mask.shape == suv.shape == raw.shape
    assert np.allclose(mask.affine, expected_affine) and np.allclose(suv.affine, expected_affine)
    assert np.allclose(suv.get_fdata(), raw / 1000.0, atol=1e-6)  # 70 kg x 1000 / 7e7 Bq
    assert mask.get_data_dtype() == np.uint8
    columns, rows = read_csv(written[2])
    assert columns == ["case", *LESION_COLUMNS] and {r["case"] for r in rows} <= {"PT_7_a"}
    if rows:  # SUVs are measured on the converted volume
        assert max(float(r["suv_max"]) for r in rows) <= raw.max() / 1000.0 + 1e-6
    assert written[3].read_bytes()[:4] == b"\x89PNG"


def test_a_bad_dicom_series_is_refused_naming_the_folder(checkpoint, tmp_path):
    series = write_dicom_series(tmp_path / "series", dicom_raw((8, 8, 3)))
    first = series / "0000.dcm"
    ds = pydicom.dcmread(first)
    ds.Units = "CNTS"
    ds.save_as(first)
    with pytest.raises(ValueError, match=r"series: Units \(0054,1001\) is 'CNTS'|series: Units differs between slices"):
        predict(predict_config(checkpoint, series, tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*_mask.nii.gz"))


# --------------------------------------------------------------------------- the script


def test_predict_script_runs_as_documented(checkpoint, scan, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), f"ckpt={checkpoint}", f"input={scan}", f"output={tmp_path / 'cli'}",
         "window=[16,16,16]", "overlap=[4,4,4]", "device=cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for suffix in ("mask.nii.gz", "lesions.csv", "mip.png"):
        assert (tmp_path / "cli" / f"patient 1_{suffix}").is_file()
    assert "predicting" in result.stderr  # the progress bar


def test_a_wrong_checkpoint_gets_a_clear_error(checkpoint, tmp_path):
    from wspet.inference.predict import load_model

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt: not a readable PyTorch checkpoint"):
        load_model(garbage, torch.device("cpu"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.ckpt: not a wspet checkpoint"):
        load_model(foreign, torch.device("cpu"))
    mismatched = tmp_path / "mismatched.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["hyper_parameters"]["net"] = {"features": [4, 8]}
    torch.save(saved, mismatched)
    with pytest.raises(ValueError, match=r"mismatched.ckpt: weights do not fit the network config net=\{'features': \[4, 8\]\}"):
        load_model(mismatched, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt: checkpoint does not exist"):
        load_model(tmp_path / "missing.ckpt", torch.device("cpu"))


# --------------------------------------------------------------------------- hostile inputs and races


def test_a_second_run_writing_the_same_case_fails_and_keeps_the_first_runs_files(checkpoint, scan, tmp_path):
    from wspet.inference.predict import find_inputs, load_volume, write_outputs

    out = tmp_path / "out"
    # The second run planned (found no outputs) before the first run wrote its own.
    (late,) = plan_jobs(find_inputs(scan), out, overwrite=False)
    first = predict(predict_config(checkpoint, scan, out))
    before = {path.name: path.read_bytes() for path in first}
    mask = np.ones(nib.load(scan).shape, bool)
    with pytest.raises(FileExistsError, match=r"patient 1_mask.nii.gz: exists \(another run wrote it\?\)"):
        write_outputs(late, load_volume(late), mask)
    assert {path.name: path.read_bytes() for path in first} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no staging folder left
    rewritten = write_outputs(late, load_volume(late), mask, overwrite=True)
    assert nib.load(rewritten[0]).get_fdata().all()


def test_a_case_that_fails_half_way_leaves_nothing_to_block_a_rerun(checkpoint, scan, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(wspet.inference.predict, "save_mip_png", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        predict(predict_config(checkpoint, scan, tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.undo()
    assert len(predict(predict_config(checkpoint, scan, tmp_path / "out"))) == 3


def test_a_one_by_one_by_two_image_gets_all_its_outputs(checkpoint, tmp_path, monkeypatch):
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.array([[[1.0, 3.0]]], np.float32), AFFINE), path)
    monkeypatch.setattr(wspet.inference.predict, "predict_mask", lambda *args, **kwargs: np.array([[[False, True]]]))
    written = predict(predict_config(checkpoint, path, tmp_path / "out"))
    assert [p.name for p in written] == ["tiny_mask.nii.gz", "tiny_lesions.csv", "tiny_mip.png"]
    assert red_pixels(written[2]) > 0


def test_a_300_character_patient_id_makes_short_unique_file_names(checkpoint, tmp_path):
    first, second = "P" * 299 + "1", "P" * 299 + "2"
    series = [write_dicom_series(tmp_path / name[-1], dicom_raw((8, 8, 4)), patient_id=name) for name in (first, second)]
    names = []
    for folder, patient in zip(series, (first, second)):
        written = predict(predict_config(checkpoint, folder, tmp_path / "out", window=[8, 8, 8], overlap=[0, 0, 0]))
        names.append(written[0].name)
        _, rows = read_csv(written[1])
        assert all(row["case"] == patient for row in rows)  # the CSV keeps the whole name
    assert all(len(name.encode()) <= 255 for name in names) and names[0] != names[1]
    assert names[0].startswith("P" * 100) and names[0].endswith("_mask.nii.gz")


@pytest.mark.parametrize("name", ["=HYPERLINK(1)", "+1", "-2+3", "@SUM(A1)"])
def test_a_formula_case_name_is_neutralised_in_the_lesion_csv(checkpoint, tmp_path, monkeypatch, name):
    path = tmp_path / "in" / f"{name}.nii.gz"
    path.parent.mkdir()
    suv = np.ones((8, 8, 8), np.float32)
    suv[2:4, 2:4, 2:4] = 5.0
    nib.save(nib.Nifti1Image(suv, AFFINE), path)
    monkeypatch.setattr(wspet.inference.predict, "predict_mask", lambda *args, **kwargs: suv > 2)
    predict(predict_config(checkpoint, path, tmp_path / "out", window=[8, 8, 8], overlap=[0, 0, 0]))
    _, rows = read_csv(tmp_path / "out" / f"{name}_lesions.csv")
    assert [row["case"] for row in rows] == ["'" + name]
    assert float(rows[0]["suv_max"]) == 5.0


def test_predict_without_arguments_prints_the_usage(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "predict.py")], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python predict.py ckpt=" in result.stderr and "missing ckpt=, input=, output=" in result.stderr
    assert "Traceback" not in result.stderr
    bad = subprocess.run([sys.executable, str(REPO / "predict.py"), f"ckpt={tmp_path / 'none.ckpt'}",
                          f"input={tmp_path / 'none.nii.gz'}", f"output={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"error: {tmp_path / 'none.nii.gz'}: input does not exist" in bad.stderr


def test_a_scan_whose_resampled_grid_is_too_large_is_refused_naming_it(checkpoint, tmp_path):
    resampling = tmp_path / "resampling.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["preprocessing"] = {"target_spacing": [4.0, 4.0, 4.0], "intensity": "suv", "suv_scale": 1.0}
    torch.save(saved, resampling)
    path = tmp_path / "coarse.nii.gz"
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([1000.0, 1000.0, 1000.0, 1.0])), path)
    with pytest.raises(ValueError, match=r"coarse.nii.gz: shape \(16, 16, 16\) .* is a \(4000, 4000, 4000\) grid"):
        predict(predict_config(checkpoint=resampling, input_path=path, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_bad_scan_is_refused_naming_the_scan_and_not_the_current_folder(checkpoint, tmp_path, monkeypatch):
    path = tmp_path / "scans" / "nan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), AFFINE), path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as refused:
        predict(predict_config(checkpoint, path, tmp_path / "out"))
    assert str(refused.value) == "scans/nan.nii.gz: 512 NaN voxels; fix or drop the case"


def test_a_scan_smaller_than_a_voxel_of_the_model_or_constant_once_resampled_is_refused_naming_it(checkpoint, tmp_path):
    resampling = tmp_path / "resampling.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["preprocessing"] = {"target_spacing": [8.0, 8.0, 8.0], "intensity": "zscore"}
    torch.save(saved, resampling)
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(ValueError, match=r"tiny.nii.gz: shape \(2, 2, 2\) at spacing \[2.0, 2.0, 2.0\] mm spans "
                                         r"\[4.0, 4.0, 4.0\] mm, less than one voxel of the model's \[8.0, 8.0, 8.0\] mm"):
        predict(predict_config(checkpoint=resampling, input_path=path, output=tmp_path / "out"))
    path = tmp_path / "one_voxel.nii.gz"  # 8 mm wide: one voxel at 8 mm, which no z-score can normalise
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(ValueError, match=r"one_voxel.nii.gz: image shape \(1, 1, 1\) is constant"):
        predict(predict_config(checkpoint=resampling, input_path=path, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_box_prompted_prediction_keeps_only_what_lies_in_the_case_boxes(checkpoint, scan, tmp_path):
    import json

    plain = predict(predict_config(checkpoint, scan, tmp_path / "plain", threshold=0.0))  # every voxel: a full mask
    full = np.asarray(nib.load(plain[0]).dataobj) > 0
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"patient 1": [[2, 3, 4, 8, 9, 10], [10, 12, 0, 20, 24, 5]]}))
    prompted = predict(predict_config(checkpoint, scan, tmp_path / "prompted", threshold=0.0, boxes=str(boxes)))
    mask = np.asarray(nib.load(prompted[0]).dataobj) > 0
    inside = np.zeros(mask.shape, bool)
    inside[2:8, 3:9, 4:10] = inside[10:20, 12:24, 0:5] = True
    assert full.all() and np.array_equal(mask, inside)


def test_a_prompt_box_the_model_leaves_empty_is_segmented_by_otsu_and_logged(checkpoint, scan, tmp_path, caplog):
    import json

    from wspet.data.pseudo_labels import box_lesion

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"patient 1": [[2, 3, 4, 8, 9, 10]]}))
    # threshold 1: the model predicts nothing anywhere, so the box falls back on Otsu's threshold
    with caplog.at_level("WARNING", logger="wspet.inference.predict"):
        filled = predict(predict_config(checkpoint, scan, tmp_path / "filled", threshold=1.0, boxes=str(boxes)))
    mask = np.asarray(nib.load(filled[0]).dataobj) > 0
    image = np.asarray(nib.load(scan).dataobj, dtype=np.float32)
    expected = np.zeros(mask.shape, bool)
    expected[2:8, 3:9, 4:10] = box_lesion(image[2:8, 3:9, 4:10], "otsu", component="central")[0]
    assert expected.any() and np.array_equal(mask, expected)
    assert "no lesion in box [2, 3, 4, 8, 9, 10]" in caplog.text and "box_fallback=otsu" in caplog.text
    empty = predict(predict_config(checkpoint, scan, tmp_path / "empty", threshold=1.0, boxes=str(boxes), box_fallback="none"))
    assert not (np.asarray(nib.load(empty[0]).dataobj) > 0).any()
    with pytest.raises(ValueError, match=r"box_fallback='41%' is not one of"):
        predict(predict_config(checkpoint, scan, tmp_path / "bad", boxes=str(boxes), box_fallback="41%"))
    with pytest.raises(ValueError, match=r"box_union='no' is not true or false"):
        predict(predict_config(checkpoint, scan, tmp_path / "bad", boxes=str(boxes), box_union="no"))
    joined = predict(predict_config(checkpoint, scan, tmp_path / "joined", threshold=1.0, boxes=str(boxes), box_union=True))
    assert np.array_equal(np.asarray(nib.load(joined[0]).dataobj) > 0, expected)  # nothing predicted: the box's lesion alone
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").glob("*_mask.nii.gz"))


def test_box_prompts_missing_a_case_or_outside_the_scan_are_refused(checkpoint, scan, tmp_path):
    import json

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"someone else": [[0, 0, 0, 2, 2, 2]]}))
    with pytest.raises(ValueError, match=r"no boxes for case\(s\) \['patient 1'\]"):
        predict(predict_config(checkpoint, scan, tmp_path / "a", boxes=str(other)))
    outside = tmp_path / "outside.csv"
    outside.write_text("case,i0,j0,k0,i1,j1,k1\npatient 1,0,0,0,30,2,2\n")
    with pytest.raises(ValueError, match=r"outside.csv: case 'patient 1' .* outside the volume of shape \(20, 24, 18\)"):
        predict(predict_config(checkpoint, scan, tmp_path / "b", boxes=str(outside)))
    assert not (tmp_path / "b" / "patient 1_mask.nii.gz").exists()


# --------------------------------------------------------------------------- scoring a labelled split


def labels_of(dataset: Path) -> dict[str, Path]:
    from wspet.data.format import read_dataset

    return {case.image: case.label for case in read_dataset(dataset).test}


def perfect_then_empty(dataset: Path):
    """A predict_mask stand-in: the label for hn_006 (Dice 1), nothing for hn_007 (Dice 0)."""
    from wspet.data.format import load_label

    labels = labels_of(dataset)

    def fake(model, image, *args, **kwargs):
        if image.path.name.startswith("hn_006"):
            return load_label(labels[image.path], image) > 0
        return np.zeros(image.array.shape, bool)

    return fake


def test_a_labelled_split_gets_metrics_csv_and_the_summary_on_stdout(checkpoint, tiny_dataset, tmp_path, monkeypatch,
                                                                     capsys):
    from wspet.data.format import load_image, load_label
    from wspet.metrics.summary import METRIC_NAMES as METRIC_COLUMNS
    from wspet.metrics.lesions import lesion_detection

    monkeypatch.setattr(wspet.inference.predict, "predict_mask", perfect_then_empty(tiny_dataset))
    written = predict(predict_config(checkpoint, tiny_dataset, tmp_path / "out"))
    assert written[-1] == tmp_path / "out" / "metrics.csv"
    columns, rows = read_csv(written[-1])
    assert columns == ["case", *METRIC_COLUMNS]
    assert [row["case"] for row in rows] == ["hn_006", "hn_007", "mean"]
    image = load_image(tiny_dataset / "imagesTs" / "hn_006.nii.gz")
    lesions = lesion_detection(load_label(tiny_dataset / "labelsTs" / "hn_006.nii.gz", image),
                               load_label(tiny_dataset / "labelsTs" / "hn_006.nii.gz", image)).found
    perfect, empty, mean = ({key: float(value) for key, value in row.items() if key != "case"} for row in rows)
    assert perfect == {"dice": 1.0, "ude_mm": 0.0, "hd95_mm": 0.0, "lesions_found": lesions, "lesions_missed": 0.0,
                       "lesions_false": 0.0, "pred_empty": 0.0}
    assert (empty["dice"], empty["pred_empty"], empty["lesions_found"]) == (0.0, 1.0, 0.0)
    assert np.isnan(empty["ude_mm"]) and np.isnan(empty["hd95_mm"])
    assert (mean["dice"], mean["ude_mm"], mean["pred_empty"]) == (0.5, 0.0, 0.5)  # distances over defined cases
    out = capsys.readouterr().out
    assert "Metrics of 2 labelled case(s):" in out
    assert f"{'mean':<16}{0.5:>8.3f}{0.0:>10.2f}" in out
    assert "mean of 2 case(s): Dice 0.500, UDE 0.00 mm, HD95 0.00 mm" in out
    assert "(1 of 2 cases had an empty prediction)" in out and "not scored" not in out


def test_cases_without_a_label_are_predicted_not_scored_and_said_so(checkpoint, tiny_dataset, tmp_path, monkeypatch,
                                                                      capsys):
    import json
    import shutil

    dataset = tmp_path / "data"
    shutil.copytree(tiny_dataset, dataset)
    index = json.loads((dataset / "dataset.json").read_text())
    (second,) = [entry for entry in index["test"] if "hn_007" in entry["image"]]
    del second["label"]
    (dataset / "dataset.json").write_text(json.dumps(index))
    monkeypatch.setattr(wspet.inference.predict, "predict_mask", perfect_then_empty(dataset))
    written = predict(predict_config(checkpoint, dataset, tmp_path / "out"))
    assert (tmp_path / "out" / "hn_007_mask.nii.gz") in written
    _, rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert [(row["case"], float(row["dice"])) for row in rows] == [("hn_006", 1.0), ("mean", 1.0)]
    assert "1 case(s) have no label: predicted, not scored (hn_007)" in capsys.readouterr().out

    for entry in index["test"]:
        entry.pop("label", None)
    (dataset / "dataset.json").write_text(json.dumps(index))
    written = predict(predict_config(checkpoint, dataset, tmp_path / "unlabelled"))
    assert not (tmp_path / "unlabelled" / "metrics.csv").exists() and len(written) == 6
    assert "2 case(s) have no label: predicted, not scored (hn_006, hn_007)" in capsys.readouterr().out


def test_scans_that_are_not_a_dataset_are_not_scored(checkpoint, scan, tmp_path, capsys):
    predict(predict_config(checkpoint, scan, tmp_path / "out", progress=False))
    assert not (tmp_path / "out" / "metrics.csv").exists()
    assert capsys.readouterr().out == ""


def test_an_existing_metrics_csv_is_refused_before_predicting_unless_overwrite(checkpoint, tiny_dataset, tmp_path,
                                                                                monkeypatch):
    calls = []
    fake = perfect_then_empty(tiny_dataset)
    monkeypatch.setattr(wspet.inference.predict, "predict_mask", lambda *a, **k: calls.append(1) or fake(*a, **k))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("an earlier evaluation")
    with pytest.raises(FileExistsError, match=r"metrics.csv: exists \(pass overwrite=true"):
        predict(predict_config(checkpoint, tiny_dataset, out))
    assert calls == [] and (out / "metrics.csv").read_text() == "an earlier evaluation"
    predict(predict_config(checkpoint, tiny_dataset, out, overwrite=True))
    assert [row["case"] for row in read_csv(out / "metrics.csv")[1]] == ["hn_006", "hn_007", "mean"]
    assert not list(out.glob(".*"))  # no staging folder left


def test_metrics_csv_written_meanwhile_by_another_run_is_kept(tmp_path):
    from wspet.inference.predict import write_metrics

    target = tmp_path / "metrics.csv"
    target.write_text("the other run's")
    row = {"case": "a", "dice": 0.5, "ude_mm": 1.0, "hd95_mm": 2.0, "lesions_found": 1.0, "lesions_missed": 0.0,
           "lesions_false": 0.0, "pred_empty": 0.0}
    with pytest.raises(FileExistsError, match=r"metrics.csv: exists \(another run wrote it\?\)"):
        write_metrics(target, [row])
    assert target.read_text() == "the other run's" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    write_metrics(target, [row], overwrite=True)
    assert [r["case"] for r in read_csv(target)[1]] == ["a", "mean"]


def test_postprocess_morphology_from_the_predict_config_reaches_the_prediction(checkpoint, tiny_dataset, tmp_path,
                                                                               monkeypatch):
    from tests.conftest import compose_config
    from wspet.postprocess.morphology import open_and_filter

    cfg = compose_config("predict", [f"ckpt={checkpoint}", f"input={tiny_dataset}", f"output={tmp_path / 'out'}",
                                     "postprocess=morphology", "window=[32,32,32]", "overlap=[0,0,0]", "device=cpu",
                                     "mip_png=false", "lesions_csv=false"])
    steps = []
    fake = perfect_then_empty(tiny_dataset)
    monkeypatch.setattr(wspet.inference.predict, "predict_mask",
                        lambda model, image, postprocess, *a, **k: steps.append(postprocess) or fake(model, image))
    predict(cfg)
    assert [step.func for step in steps] == [open_and_filter, open_and_filter]
    assert steps[0].keywords == {"radius_mm": 3.5, "min_volume_ml": 0.5}
    assert [row["case"] for row in read_csv(tmp_path / "out" / "metrics.csv")[1]] == ["hn_006", "hn_007", "mean"]


def test_progress_bars_over_scans_and_windows_unless_switched_off(checkpoint, scan, tmp_path, capsys):
    predict(predict_config(checkpoint, scan, tmp_path / "on"))
    err = capsys.readouterr().err
    # 20 x 24 x 18 voxels in 16^3 windows overlapping by 4: 2 x 2 x 2 windows.
    assert "predicting" in err and "windows:" in err and "/8 [" in err
    predict(predict_config(checkpoint, scan, tmp_path / "off", progress=False))
    err = capsys.readouterr().err
    assert "predicting" not in err and "windows" not in err


def test_box_prompts_join_each_box_lesion_to_the_model_by_default(checkpoint, tiny_dataset, tmp_path, monkeypatch):
    import json

    from tests.conftest import compose_config
    from wspet.data.format import load_image, load_label, read_dataset
    from wspet.evaluation.reference_rows import tight_boxes
    from wspet.postprocess.box_prompt import fill_empty_boxes

    cases = read_dataset(tiny_dataset).test
    boxes, truth = {}, {}
    for case in cases:
        image = load_image(case.image)
        truth[case.name] = (image, load_label(case.label, image) > 0)
        boxes[case.name] = [list(map(int, box)) for box in tight_boxes(truth[case.name][1])]
    prompts = tmp_path / "boxes.json"
    prompts.write_text(json.dumps(boxes))

    def one_voxel_per_lesion(model, image, *args, **kwargs):  # a model that finds a sliver of each lesion
        mask = np.zeros(image.array.shape, bool)
        for i0, j0, k0, *_ in boxes[image.path.name.split(".")[0]]:
            mask[i0, j0, k0] = True
        return mask

    monkeypatch.setattr(wspet.inference.predict, "predict_mask", one_voxel_per_lesion)
    common = [f"ckpt={checkpoint}", f"input={tiny_dataset}", f"boxes={prompts}", "device=cpu", "mip_png=false",
              "lesions_csv=false", "progress=false"]
    predict(compose_config("predict", [*common, f"output={tmp_path / 'joined'}"]))
    predict(compose_config("predict", [*common, f"output={tmp_path / 'alone'}", "box_union=false"]))
    for case in cases:
        image, label = truth[case.name]
        sliver = one_voxel_per_lesion(None, image)
        joined = np.asarray(nib.load(tmp_path / "joined" / f"{case.name}_mask.nii.gz").dataobj) > 0
        alone = np.asarray(nib.load(tmp_path / "alone" / f"{case.name}_mask.nii.gz").dataobj) > 0
        assert np.array_equal(alone, sliver)  # box_union=false: a box the model found something in keeps it alone
        assert np.array_equal(joined, fill_empty_boxes(sliver, image.array, boxes[case.name], union=True)[0])
        assert (joined & label).sum() > 10 * (alone & label).sum()  # the default delineates the lesions


# --------------------------------------------------------------------------- ensembles


def test_a_list_of_checkpoints_predicts_with_their_mean_probability(checkpoint, second_checkpoint, scan, tmp_path):
    from tests.conftest import compose_config
    from wspet.inference.predict import load_model
    from wspet.inference.sliding_window import predict_probabilities

    image = nib.load(scan)
    array = np.asarray(image.dataobj, dtype=np.float32)
    each = [predict_probabilities(load_model(path, torch.device("cpu")), array, image.affine, (16, 16, 16), (4, 4, 4))
            for path in (checkpoint, second_checkpoint)]
    threshold = float(np.median(np.mean(each, axis=0)))  # a threshold that splits this untrained pair's answer
    cfg = predict_config(checkpoint, scan, tmp_path / "out", lesions_csv=False, mip_png=False, threshold=threshold)
    cfg.ckpt = compose_config("predict", [f"ckpt=[{checkpoint},{second_checkpoint}]"]).ckpt  # as on the command line
    mask = np.asarray(nib.load(predict(cfg)[0]).dataobj).astype(bool)
    assert np.array_equal(mask, np.mean(each, axis=0) > threshold)
    assert not np.array_equal(mask, each[0] > threshold) and not np.array_equal(mask, each[1] > threshold)


@pytest.mark.parametrize("ckpt, message", [
    ([], r"ckpt=\[\] is not a checkpoint path or a non-empty list of them"),
    ([3], r"ckpt=\[3\] is not a checkpoint path"),
    ("twice", "more than once; an ensemble takes each model once"),
])
def test_a_bad_list_of_checkpoints_is_refused_before_anything_is_written(checkpoint, scan, tmp_path, ckpt, message):
    cfg = predict_config(checkpoint, scan, tmp_path / "out")
    cfg.ckpt = [str(checkpoint), str(checkpoint.parent / "." / checkpoint.name)] if ckpt == "twice" else ckpt
    with pytest.raises(ValueError, match=message):
        predict(cfg)
    assert not (tmp_path / "out" / "patient 1_mask.nii.gz").exists()


def test_a_broken_member_of_an_ensemble_is_named(checkpoint, scan, tmp_path):
    garbage = tmp_path / "member2.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    cfg = predict_config(checkpoint, scan, tmp_path / "out")
    cfg.ckpt = [str(checkpoint), str(garbage)]
    with pytest.raises(ValueError, match="member2.ckpt: not a readable PyTorch checkpoint"):
        predict(cfg)


# --------------------------------------------------------------------------- test-time mirroring


def plain_and_mirrored(checkpoint, scan, axes):
    """``checkpoint``'s probabilities on ``scan`` unmirrored and mirrored along ``axes``, as predict's test config."""
    from wspet.inference.predict import load_model
    from wspet.inference.sliding_window import predict_probabilities

    image = nib.load(scan)
    array = np.asarray(image.dataobj, dtype=np.float32)
    model = load_model(checkpoint, torch.device("cpu"))
    predict_ = functools.partial(predict_probabilities, model, array, image.affine, (16, 16, 16), (4, 4, 4))
    return predict_(), predict_(mirror_axes=axes)


def test_mirror_axes_from_the_command_line_average_the_flipped_scans(checkpoint, scan, tmp_path):
    from tests.conftest import compose_config

    plain, mirrored = plain_and_mirrored(checkpoint, scan, (0, 2))
    threshold = float(np.median(mirrored))
    cfg = predict_config(checkpoint, scan, tmp_path / "out", lesions_csv=False, mip_png=False, threshold=threshold)
    cfg.mirror_axes = compose_config("predict", ["mirror_axes=[2,0]"]).mirror_axes  # as on the command line
    mask = np.asarray(nib.load(predict(cfg)[0]).dataobj).astype(bool)
    assert np.array_equal(mask, mirrored > threshold)
    assert not np.array_equal(mask, plain > threshold)


@pytest.mark.parametrize("value", [[3], [0, 0], "02", 2])
def test_bad_mirror_axes_are_refused_before_anything_is_written(checkpoint, scan, tmp_path, value):
    cfg = predict_config(checkpoint, scan, tmp_path / "out", mirror_axes=value)
    with pytest.raises(ValueError, match="mirror_axes .* needs auto or a list of distinct volume axes among 0, 1, 2"):
        predict(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("value", [1.5, -0.2, float("nan")])
def test_a_threshold_outside_0_1_is_refused_before_anything_is_written(checkpoint, scan, tmp_path, value):
    cfg = predict_config(checkpoint, scan, tmp_path / "out", threshold=value)
    with pytest.raises(ValueError, match=r"threshold .* is not a probability in \[0, 1\]"):
        predict(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_auto_warns_by_name_for_a_checkpoint_without_training_flips_and_does_not_mirror(checkpoint, scan, tmp_path, caplog):
    plain, mirrored = plain_and_mirrored(checkpoint, scan, (0, 2))
    threshold = float(np.median(mirrored))
    cfg = predict_config(checkpoint, scan, tmp_path / "auto", lesions_csv=False, mip_png=False, threshold=threshold,
                         mirror_axes="auto")
    mask = np.asarray(nib.load(predict(cfg)[0]).dataobj).astype(bool)
    assert f"{checkpoint} records no training flips" in caplog.text
    assert caplog.text.count("records no training flips") == 1
    assert np.array_equal(mask, plain > threshold) and not np.array_equal(mask, mirrored > threshold)


def test_auto_mirrors_along_the_flips_the_checkpoint_records(checkpoint, scan, tmp_path, caplog):
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["training_flips"] = [2]
    flipped = tmp_path / "flipped.ckpt"
    torch.save(saved, flipped)
    plain, mirrored = plain_and_mirrored(flipped, scan, (2,))
    threshold = float(np.median(mirrored))
    cfg = predict_config(flipped, scan, tmp_path / "auto", lesions_csv=False, mip_png=False, threshold=threshold,
                         mirror_axes="auto")
    mask = np.asarray(nib.load(predict(cfg)[0]).dataobj).astype(bool)
    assert np.array_equal(mask, mirrored > threshold) and not np.array_equal(mask, plain > threshold)
    assert "records no training flips" not in caplog.text


def test_a_scan_stored_in_another_axis_order_gets_the_mask_of_the_scan_in_the_training_order(checkpoint, scan, tmp_path,
                                                                                              caplog):
    from wspet.model.orientation import turn_to

    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["training_orientation"] = ["L", "P", "S"]  # the scan fixture's axes
    oriented = tmp_path / "oriented.ckpt"
    torch.save(saved, oriented)
    image = nib.load(scan)
    turn = turn_to(image.affine, ("S", "R", "A"))
    array, affine = turn.apply(np.asarray(image.dataobj), image.affine)
    other = tmp_path / "other" / "patient 1.nii.gz"  # the same scan as another converter would store it
    other.parent.mkdir()
    nib.save(nib.Nifti1Image(array, affine), other)
    threshold = float(np.median(plain_and_mirrored(oriented, scan, ())[0]))
    with caplog.at_level("INFO", logger="wspet.inference.sliding_window"):
        masks = [
            np.asarray(nib.load(predict(predict_config(oriented, path, tmp_path / name, lesions_csv=False,
                                                       mip_png=False, threshold=threshold))[0]).dataobj).astype(bool)
            for path, name in ((scan, "lps"), (other, "sra"))
        ]
    assert 0 < masks[0].sum() < masks[0].size
    assert masks[1].shape == array.shape
    np.testing.assert_array_equal(masks[1], turn.apply(masks[0], image.affine)[0])
    assert f"{other}: voxel axes SRA, the model's training volumes LPS: predicted in their axis order" in caplog.text
    assert caplog.text.count("voxel axes") == 1  # the scan in the training order is not turned
