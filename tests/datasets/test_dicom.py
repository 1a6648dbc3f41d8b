"""Tests for wspet.datasets.dicom: PET DICOM series -> SUV volume and NIfTI."""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from wspet.datasets.dicom import F18_HALF_LIFE_S, PetVolume, main, read_pet_series, series_to_suv_nifti
from wspet.io import save_nifti

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
STS_001_DICOM = DATA / "sts-fdg-pet-dicom" / "STS_001" / "FDG_PET"
STS_001_NIFTI = DATA / "sts-fdg-pet" / "STS_001"

SHAPE = (8, 6, 5)  # (columns, rows, slices): non-square so a transposition shows
ROW_SPACING, COL_SPACING, SLICE_SPACING = 3.0, 2.0, 4.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def make_raw(seed: int = 0) -> np.ndarray:
    """(I, J, K) int16 stored values."""
    return np.random.default_rng(seed).integers(0, 2000, size=SHAPE).astype(np.int16)


def write_series(
    folder: Path,
    raw: np.ndarray,
    *,
    slopes: list[float] | None = None,
    intercept: float = 0.0,
    units: str | None = "BQML",
    decay: str | None = "START",
    weight: float | None = 70.0,
    dose: float | None = 3.7e8,
    half_life: float | None = 6588.0,
    nuclide_code: tuple[str, str] | None = ("C-111A1", "^18^Fluorine"),
    inj_time: str | None = "103000.00",
    inj_datetime: str | None = None,
    series_time: str | None = "113000.00",
    acq_times: list[str] | None = None,
    date: str = "20200101",
    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (-20.0, -30.0, 100.0),
    positions_k: list[float] | None = None,
    order: list[int] | None = None,
    series_uid: str | None = None,
    frame_uid: str = "1.2.3.4.5",
) -> Path:
    """Write one PET slice file per k; slice k sits at origin + positions_k[k] * normal.

    Files are named and numbered in ``order`` (a permutation of k), so neither the file
    name nor InstanceNumber follows the slice position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = raw.shape[2]
    slopes = slopes or [1.0] * n
    positions_k = positions_k if positions_k is not None else [SLICE_SPACING * k for k in range(n)]
    order = order if order is not None else list(range(n))
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    series_uid = series_uid or generate_uid()
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "PT"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = file_index + 1
        ds.SeriesDate = ds.AcquisitionDate = date
        if series_time is not None:
            ds.SeriesTime = series_time
        ds.AcquisitionTime = acq_times[k] if acq_times else (series_time or "113000.00")
        if units is not None:
            ds.Units = units
        if decay is not None:
            ds.DecayCorrection = decay
        if weight is not None:
            ds.PatientWeight = weight
        radio = Dataset()
        if dose is not None:
            radio.RadionuclideTotalDose = dose
        if half_life is not None:
            radio.RadionuclideHalfLife = half_life
        if inj_time is not None:
            radio.RadiopharmaceuticalStartTime = inj_time
        if inj_datetime is not None:
            radio.RadiopharmaceuticalStartDateTime = inj_datetime
        if nuclide_code is not None:
            code = Dataset()
            code.CodeValue, code.CodeMeaning = nuclide_code
            code.CodingSchemeDesignator = "SRT"
            radio.RadionuclideCodeSequence = Sequence([code])
        ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [round(float(v), 5) for v in np.asarray(origin) + positions_k[k] * normal]
        ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
        ds.SliceThickness = SLICE_SPACING
        ds.RescaleSlope = slopes[k]
        ds.RescaleIntercept = intercept
        plane = np.ascontiguousarray(raw[:, :, k].T.astype("<i2"))  # (rows, columns)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"slice_{(file_index * 7) % 97:03d}_{file_index}.dcm", enforce_file_format=True)
    return folder


def decay(seconds: float, half_life: float = 6588.0) -> float:
    return math.exp(-math.log(2.0) * seconds / half_life)


# ---------------------------------------------------------------------------------------
# SUV
# ---------------------------------------------------------------------------------------


def test_start_suv_with_per_slice_slopes_and_shuffled_files(tmp_path):
    raw = make_raw()
    slopes = [0.5, 1.25, 2.0, 0.75, 3.5]
    write_series(tmp_path, raw, slopes=slopes, intercept=1.5, order=[3, 0, 4, 1, 2])
    vol = read_pet_series(tmp_path)
    # START decays the dose from injection 10:30 to SeriesTime 11:30.
    activity = raw * np.array(slopes) + 1.5
    expected = activity * 70_000.0 / (3.7e8 * decay(3600.0))
    assert vol.suv.dtype == np.float32 and vol.suv.shape == SHAPE
    np.testing.assert_allclose(vol.suv, expected, rtol=1e-6)
    assert vol.decay_correction == "START" and vol.units == "BQML"
    assert vol.injection_time == datetime(2020, 1, 1, 10, 30)
    assert vol.scan_time == datetime(2020, 1, 1, 11, 30)
    np.testing.assert_allclose(vol.decay_factors, decay(3600.0))
    assert vol.warnings == []


def test_slices_sorted_by_position_not_instance_number(tmp_path):
    raw = make_raw(1)
    # Positions descend with k in the writer; files also shuffled.
    write_series(tmp_path, raw, positions_k=[16.0, 12.0, 8.0, 4.0, 0.0], order=[2, 4, 0, 3, 1])
    vol = read_pet_series(tmp_path)
    # Read back in ascending position: the writer's k = 4 comes first.
    expected = raw[:, :, ::-1] * 70_000.0 / (3.7e8 * decay(3600.0))
    np.testing.assert_allclose(vol.suv, expected, rtol=1e-6)
    assert vol.affine[2, 2] == pytest.approx(SLICE_SPACING)
    assert vol.affine[2, 3] == pytest.approx(100.0)


def test_admin_means_no_decay(tmp_path):
    raw = make_raw(2)
    write_series(tmp_path, raw, decay="ADMIN", inj_time=None, half_life=None, nuclide_code=None)
    vol = read_pet_series(tmp_path)
    np.testing.assert_allclose(vol.suv, raw * 70_000.0 / 3.7e8, rtol=1e-6)
    np.testing.assert_array_equal(vol.decay_factors, 1.0)
    assert vol.injection_time is None and vol.scan_time is None


def test_none_decays_to_each_slice_acquisition_time(tmp_path):
    raw = make_raw(3)
    acq = ["113000", "113100", "113200", "113300", "113400"]
    write_series(tmp_path, raw, decay="NONE", acq_times=acq, order=[4, 3, 2, 1, 0])
    vol = read_pet_series(tmp_path)
    factors = np.array([decay(3600.0 + 60.0 * k) for k in range(5)])
    np.testing.assert_allclose(vol.decay_factors, factors, rtol=1e-12)
    np.testing.assert_allclose(vol.suv, raw * 70_000.0 / (3.7e8 * factors), rtol=1e-6)
    assert vol.scan_time == datetime(2020, 1, 1, 11, 30)


def test_injection_datetime_preferred_over_time(tmp_path):
    raw = make_raw(4)
    # Injection the evening before: only the DateTime form can say so.
    write_series(tmp_path, raw, inj_time="230000", inj_datetime="20191231230000", series_time="003000")
    vol = read_pet_series(tmp_path)
    np.testing.assert_allclose(vol.decay_factors, decay(5400.0))


def test_missing_half_life_falls_back_to_f18_with_warning(tmp_path):
    raw = make_raw(5)
    write_series(tmp_path, raw, half_life=None)
    with pytest.warns(UserWarning, match="6586.2"):
        vol = read_pet_series(tmp_path)
    assert vol.half_life_s == F18_HALF_LIFE_S
    np.testing.assert_allclose(vol.suv, raw * 70_000.0 / (3.7e8 * decay(3600.0, F18_HALF_LIFE_S)), rtol=1e-6)
    assert len(vol.warnings) == 1


def test_series_time_after_acquisition_uses_acquisition_with_warning(tmp_path):
    raw = make_raw(6)
    write_series(tmp_path, raw, series_time="120000", acq_times=["113000"] * 5)
    with pytest.warns(UserWarning, match="earliest acquisition"):
        vol = read_pet_series(tmp_path)
    assert vol.scan_time == datetime(2020, 1, 1, 11, 30)


@pytest.mark.parametrize(
    ("kwargs", "tag"),
    [
        ({"weight": None}, "PatientWeight"),
        ({"dose": None}, "RadionuclideTotalDose"),
        ({"units": None}, "Units"),
        ({"decay": None}, "DecayCorrection"),
        ({"inj_time": None}, "RadiopharmaceuticalStartTime"),
        ({"half_life": None, "nuclide_code": ("C-105A1", "^11^Carbon")}, "RadionuclideHalfLife"),
        ({"half_life": None, "nuclide_code": None}, "RadionuclideHalfLife"),
        ({"weight": 0.0}, "PatientWeight"),
        ({"decay": "DEAD"}, "DecayCorrection"),
    ],
)
def test_missing_or_bad_tag_names_folder_and_tag(tmp_path, kwargs, tag):
    write_series(tmp_path, make_raw(), **kwargs)
    with pytest.raises(ValueError, match=tag) as err:
        read_pet_series(tmp_path)
    assert str(err.value).startswith(str(tmp_path))


@pytest.mark.parametrize("units", ["CNTS", "GML"])
def test_non_bqml_units_rejected(tmp_path, units):
    write_series(tmp_path, make_raw(), units=units)
    with pytest.raises(ValueError, match=f"Units.*{units}"):
        read_pet_series(tmp_path)


def test_missing_slice_rejected(tmp_path):
    # Slice at 8 mm missing: gaps 4, 8, 4, 4.
    write_series(tmp_path, make_raw(), positions_k=[0.0, 4.0, 12.0, 16.0, 20.0])
    with pytest.raises(ValueError, match="inconsistent slice spacing") as err:
        read_pet_series(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_small_position_jitter_accepted(tmp_path):
    # Multi-bed scanners jitter positions by a few hundredths of a mm.
    vol = read_pet_series(write_series(tmp_path, make_raw(), positions_k=[0.0, 4.03, 7.98, 12.0, 16.0]))
    assert vol.affine[2, 2] == pytest.approx(4.0)


def test_duplicate_positions_rejected(tmp_path):
    write_series(tmp_path, make_raw(), positions_k=[0.0, 4.0, 4.0, 8.0, 12.0])
    with pytest.raises(ValueError, match="duplicate slice position"):
        read_pet_series(tmp_path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")
def test_unreadable_time_names_folder_and_value(tmp_path):
    write_series(tmp_path, make_raw(), inj_time="25h61")
    with pytest.raises(ValueError, match="25h61") as err:
        read_pet_series(tmp_path)
    assert str(err.value).startswith(str(tmp_path))


def test_injection_after_scan_rejected(tmp_path):
    write_series(tmp_path, make_raw(), inj_time="120000")
    with pytest.raises(ValueError, match="injection time .* after"):
        read_pet_series(tmp_path)


def test_non_image_files_skipped(tmp_path):
    raw = make_raw(7)
    write_series(tmp_path, raw)
    (tmp_path / "notes.txt").write_text("not dicom")
    rt = Dataset()
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt.Modality, rt.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    rt.save_as(tmp_path / "rtstruct.dcm", enforce_file_format=True)
    vol = read_pet_series(tmp_path)
    assert vol.suv.shape == SHAPE
    np.testing.assert_allclose(vol.suv, raw * 70_000.0 / (3.7e8 * decay(3600.0)), rtol=1e-6)


def test_two_series_in_one_folder_rejected(tmp_path):
    write_series(tmp_path, make_raw(), series_uid="1.2.3.100")
    write_series(tmp_path / "tmp", make_raw(), series_uid="1.2.3.200")
    for p in (tmp_path / "tmp").iterdir():
        os.replace(p, tmp_path / f"b_{p.name}")
    with pytest.raises(ValueError, match="several image series") as err:
        read_pet_series(tmp_path)
    assert "1.2.3.100" in str(err.value) and "1.2.3.200" in str(err.value)


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(ValueError, match="no DICOM image files"):
        read_pet_series(tmp_path)


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------


def test_axial_affine_is_lps_like_reference_nifti(tmp_path):
    vol = read_pet_series(write_series(tmp_path, make_raw()))
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    assert vol.spacing == pytest.approx((COL_SPACING, ROW_SPACING, SLICE_SPACING))
    # Voxel (0, 0, 0) is the first slice's ImagePositionPatient, x and y negated.
    np.testing.assert_allclose(vol.affine[:3, 3], [20.0, 30.0, 100.0])


@settings(max_examples=15, deadline=None)
@given(angles=st.tuples(*[st.floats(-math.pi, math.pi) for _ in range(3)]))
def test_affine_maps_voxels_to_dicom_positions(tmp_path_factory, angles):
    """Any orientation: voxel (i, j, k) lands at IPP_k + i * dc * row_dir + j * dr * col_dir."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    iop = tuple(np.round(np.concatenate([rot[:, 0], rot[:, 1]]), 8))
    folder = tmp_path_factory.mktemp("oblique")
    raw = make_raw()
    write_series(folder, raw, iop=iop, order=[1, 4, 0, 2, 3])
    vol = read_pet_series(folder)
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    for i, j, k in [(0, 0, 0), (7, 0, 0), (0, 5, 0), (3, 2, 4), (7, 5, 4)]:
        in_plane = i * COL_SPACING * row_dir + j * ROW_SPACING * col_dir
        lps = np.array([-20.0, -30.0, 100.0]) + SLICE_SPACING * k * normal + in_plane
        ras = vol.affine @ [i, j, k, 1.0]
        np.testing.assert_allclose(LPS_TO_RAS[:3, :3] @ ras[:3], lps, atol=1e-3)
    np.testing.assert_allclose(vol.suv, raw * 70_000.0 / (3.7e8 * decay(3600.0)), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Writing and CLI
# ---------------------------------------------------------------------------------------


def test_write_nifti_round_trip_leaves_no_temp_files(tmp_path):
    vol = read_pet_series(write_series(tmp_path / "series", make_raw()))
    out = save_nifti(vol.suv, vol.affine, tmp_path / "out" / "pet.nii.gz")
    image = nib.load(out)
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), vol.suv)
    np.testing.assert_allclose(image.affine, vol.affine, atol=1e-5)
    assert image.get_data_dtype() == np.float32
    assert sorted(p.name for p in out.parent.iterdir()) == ["pet.nii.gz"]


def test_write_nifti_rejects_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="pet.img"):
        save_nifti(np.zeros((2, 2, 2), np.float32), np.eye(4), tmp_path / "pet.img")


def test_series_to_suv_nifti_and_cli(tmp_path):
    raw = make_raw(8)
    series = write_series(tmp_path / "series", raw)
    vol = series_to_suv_nifti(series, tmp_path / "a.nii.gz")
    assert isinstance(vol, PetVolume)
    assert main([str(series), str(tmp_path / "b.nii.gz")]) == 0
    a, b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    np.testing.assert_allclose(b.get_fdata(), raw * 70_000.0 / (3.7e8 * decay(3600.0)), rtol=1e-6)


def test_cli_mask_options_go_together(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path), str(tmp_path / "x.nii.gz"), "--roi", "GTV_Mass"])


# ---------------------------------------------------------------------------------------
# Real data: STS_001 (TCIA Soft-tissue-Sarcoma, CC BY 3.0; see docs/dicom.md)
# ---------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(
    not STS_001_DICOM.is_dir() or not STS_001_NIFTI.is_dir(), reason=f"real data not found at {DATA}"
)


def reference_voxels_on_grid(ref: nib.Nifti1Image, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """(3, N) integer indices in ``affine``'s grid of the reference voxel centres, and the
    largest distance (in voxels) of a mapped centre from an integer index."""
    ijk = np.indices(ref.shape).reshape(3, -1)
    world = ref.affine[:3, :3] @ ijk + ref.affine[:3, 3:]
    to_grid = np.linalg.inv(affine)
    mapped = to_grid[:3, :3] @ world + to_grid[:3, 3:]
    return np.rint(mapped).astype(int), float(np.abs(mapped - np.rint(mapped)).max())


@needs_data
def test_sts001_suv_agrees_with_reference_nifti():
    vol = read_pet_series(STS_001_DICOM / "image")
    ref = nib.load(STS_001_NIFTI / "PET_image.nii.gz")
    assert nib.aff2axcodes(vol.affine) == nib.aff2axcodes(ref.affine)
    idx, off_grid = reference_voxels_on_grid(ref, vol.affine)
    assert off_grid < 1e-3
    assert np.all(idx >= 0) and np.all(idx < np.array(vol.suv.shape)[:, None])
    ours = vol.suv[idx[0], idx[1], idx[2]].astype(np.float64)
    theirs = ref.get_fdata().reshape(-1)
    max_diff = float(np.abs(ours - theirs).max())
    hot = theirs > 1.0
    median_rel = float(np.median((ours[hot] - theirs[hot]) / theirs[hot]))
    print(f"STS_001 SUV vs reference: max |diff| {max_diff:.2e} SUV, median relative diff {median_rel:.1e}, "
          f"SUVmax {ours.max():.3f} vs {theirs.max():.3f}, off-grid {off_grid:.1e} voxel")
    assert max_diff < 0.005  # measured 7.8e-4 (the reference's own per-slice quantisation)
    # No systematic bias: a 6586.2 s vs 6588 s half-life alone would give 8e-5.
    assert abs(median_rel) < 1e-5
    assert vol.decay_correction == "START" and vol.weight_kg == 71.0


@needs_data
def test_sts001_cli_writes_suv_and_mask(tmp_path):
    rc = main([
        str(STS_001_DICOM / "image"), str(tmp_path / "pet.nii.gz"),
        "--rtstruct", str(STS_001_DICOM / "mask" / "1-1.dcm"), "--roi", "GTV_Mass",
        "--mask-out", str(tmp_path / "mask.nii.gz"),
    ])
    assert rc == 0
    pet, mask = nib.load(tmp_path / "pet.nii.gz"), nib.load(tmp_path / "mask.nii.gz")
    assert pet.shape == mask.shape == (128, 128, 267)
    np.testing.assert_allclose(pet.affine, mask.affine)
    assert mask.get_data_dtype() == np.uint8
    # The reference mask holds the whole GTV_Mass: 5095 voxels.
    assert int(np.asarray(mask.dataobj).sum()) == 5095


# ---------------------------------------------------------------------------------------
# Hostile values: checked like a NIfTI image's, each refusal naming the file or folder and the tag
# ---------------------------------------------------------------------------------------


def tamper(folder: Path, change, only_first: bool = False) -> Path:
    """Apply ``change(ds)`` to the series' files (the first by name only, if asked); return that file."""
    files = sorted(folder.glob("*.dcm"))
    for path in files[:1] if only_first else files:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    return files[0]


def set_attribute(name, value):
    return lambda ds: setattr(ds, name, value)


def empty_radiopharmaceutical(ds):
    ds.RadiopharmaceuticalInformationSequence = Sequence([])


def truncate_pixels(ds):
    ds.PixelData = ds.PixelData[:-10]


HOSTILE = {
    "negative slope": (set_attribute("RescaleSlope", -1.0), True, r"RescaleSlope \(0028,1053\) is -1.0, not > 0"),
    "NaN slope": (set_attribute("RescaleSlope", "NaN"), True, r"RescaleSlope \(0028,1053\) is .*NaN.*not a finite number"),
    "1e38 slope": (set_attribute("RescaleSlope", 1e38), False, r"inf voxels|not a plausible SUV"),
    "negative intercept": (set_attribute("RescaleIntercept", -1e6), False, r"minimum -\S+ is below"),
    "1e30 kg": (set_attribute("PatientWeight", 1e30), False, r"PatientWeight \(0010,1030\) is 1e\+30 kg, not in \(0, 1000\] kg"),
    "NaN kg": (set_attribute("PatientWeight", "NaN"), False, r"PatientWeight \(0010,1030\) is .*NaN.*not a finite number"),
    "one CT slice": (set_attribute("Modality", "CT"), True, r"Modality \(0008,0060\) is 'CT', not 'PT'"),
    "empty radiopharmaceutical": (empty_radiopharmaceutical, False, r"RadiopharmaceuticalInformationSequence \(0054,0016\) is empty"),
    "truncated pixels": (truncate_pixels, True, r"PixelData \(7FE0,0010\) cannot be decoded"),
    "rows mismatch": (set_attribute("Rows", SHAPE[1] + 1), False, r"PixelData \(7FE0,0010\) cannot be decoded as Rows 7"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_values_are_refused_naming_the_file_and_tag(tmp_path, case, capsys):
    change, only_first, message = HOSTILE[case]
    series = write_series(tmp_path / "series", make_raw(), weight=70.0)
    first = tamper(series, change, only_first)
    with pytest.raises(ValueError, match=message) as refused:
        read_pet_series(series)
    shown = str(refused.value)
    assert shown.startswith(str(series))
    if only_first:
        assert shown.startswith(str(first))  # the very slice at fault
    assert main([str(series), str(tmp_path / "out.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {series}") and "Traceback" not in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_an_implausible_suv_is_warned_about(tmp_path):
    series = write_series(tmp_path, make_raw(), weight=70.0, dose=3.7e5)  # a dose 1000x too small: SUV up to ~550
    with pytest.warns(UserWarning, match=r"maximum SUV \S+ is not plausible \(> 500\)"):
        volume = read_pet_series(series)
    assert float(volume.suv.max()) > 500
