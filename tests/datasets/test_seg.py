"""Tests for wspet.datasets.seg: DICOM SEG read onto, and written from, a PET series' grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import SHARED_DATA
from tests.inference.test_predict import DICOM_SPACING, checkpoint, dicom_raw, predict_config, write_dicom_series
from wspet.datasets.dicom import read_pet_series
from wspet.datasets.rtstruct import rasterise_roi
from wspet.datasets.seg import read_seg, read_seg_mask, segment_labels, write_seg
from wspet.inference.predict import predict

__all__ = ["checkpoint"]  # the fixture, imported for pytest

STS_001 = SHARED_DATA / "sts-fdg-pet-dicom" / "STS_001" / "FDG_PET"
SHAPE = (20, 18, 12)  # (I, J, K) of dicom_raw


def box_mask(i0: int, i1: int, j0: int, j1: int, k0: int, k1: int, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[i0:i1, j0:j1, k0:k1] = 1
    return mask


@pytest.fixture
def series(tmp_path) -> Path:
    """A synthetic PET series with the study attributes a SEG copies from its source."""
    folder = write_dicom_series(tmp_path / "pet", dicom_raw(SHAPE))
    rewrite_series(folder, StudyInstanceUID="1.2.3.4.5", PatientName="Doe^Jane", PatientBirthDate="",
                   PatientSex="O", StudyID="1", StudyDate="20200101", StudyTime="110000",
                   AccessionNumber="", ReferringPhysicianName="", SeriesNumber=3, InstanceNumber=1)
    return folder


def rewrite_series(folder: Path, **changes) -> None:
    """Set header values in every slice of the series in ``folder`` (a series made elsewhere)."""
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value(ds) if callable(value) else value)
        ds.save_as(path)


# --------------------------------------------------------------------------- round trips


@pytest.mark.skipif(not STS_001.is_dir(), reason=f"shared data absent: {STS_001}")
def test_sts_001_gtv_round_trips_voxel_for_voxel(tmp_path):
    pet = read_pet_series(STS_001 / "image")
    gtv = rasterise_roi(STS_001 / "mask" / "1-1.dcm", "GTV_Mass", pet)
    out = write_seg(gtv, STS_001 / "image", tmp_path / "STS_001_seg.dcm", label="GTV_Mass", automatic=False)
    back = read_seg_mask(out, pet, ["GTV_Mass"])
    assert gtv.sum() > 1000  # the reference mask is a real tumour, not an empty one
    assert back.shape == gtv.shape == pet.suv.shape
    assert np.array_equal(back, gtv)
    seg = read_seg(out)
    assert seg.FrameOfReferenceUID == pet.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet.series_uid


def test_synthetic_round_trip_keeps_every_voxel(series, tmp_path):
    pet = read_pet_series(series)
    mask = box_mask(3, 9, 4, 7, 2, 5)
    mask[15, 16, 11] = 1  # a corner voxel in the last slice: an axis flip would move it
    write_seg(mask, series, tmp_path / "a.dcm")
    assert np.array_equal(read_seg_mask(tmp_path / "a.dcm", pet), mask)


def test_segments_are_chosen_by_label_or_number_across_several_files(series, tmp_path):
    pet = read_pet_series(series)
    primary, node = box_mask(2, 5, 2, 5, 1, 3), box_mask(10, 14, 8, 12, 6, 9)
    write_seg(primary, series, tmp_path / "primary.dcm", label="GTV primary")
    write_seg(node, series, tmp_path / "node.dcm", label="GTV node")
    files = [tmp_path / "primary.dcm", tmp_path / "node.dcm"]
    assert np.array_equal(read_seg_mask(files, pet, ["gtv NODE"]), node)
    assert np.array_equal(read_seg_mask(files, pet), primary | node)
    assert np.array_equal(read_seg_mask(files[:1], pet, [1]), primary)
    assert segment_labels(read_seg(files[1])) == {1: "GTV node"}


def test_an_empty_mask_round_trips(series, tmp_path):
    pet = read_pet_series(series)
    write_seg(np.zeros(SHAPE, np.uint8), series, tmp_path / "empty.dcm")
    back = read_seg_mask(tmp_path / "empty.dcm", pet)
    assert back.shape == SHAPE and back.sum() == 0


# --------------------------------------------------------------------------- refusals


def test_unknown_segment_label_is_refused_listing_the_segments(series, tmp_path):
    pet = read_pet_series(series)
    write_seg(box_mask(2, 5, 2, 5, 1, 3), series, tmp_path / "seg.dcm", label="GTV primary")
    with pytest.raises(ValueError, match=r"\['Lymph node'\] not found.*seg\.dcm: 1 'GTV primary'"):
        read_seg_mask(tmp_path / "seg.dcm", pet, ["Lymph node"])


def test_other_frame_of_reference_is_refused_naming_the_file(series, tmp_path):
    write_seg(box_mask(2, 5, 2, 5, 1, 3), series, tmp_path / "seg.dcm")
    rewrite_series(series, FrameOfReferenceUID="1.2.3.999")
    with pytest.raises(ValueError, match=r"seg\.dcm: FrameOfReferenceUID 1\.2\.3\.4 is not the PET series' 1\.2\.3\.999"):
        read_seg_mask(tmp_path / "seg.dcm", read_pet_series(series))


def test_seg_off_the_series_grid_is_refused_naming_the_file(series, tmp_path):
    write_seg(box_mask(2, 5, 2, 5, 1, 3), series, tmp_path / "seg.dcm")
    half_voxel = DICOM_SPACING[0] / 2
    rewrite_series(series, ImagePositionPatient=lambda ds: [ds.ImagePositionPatient[0] + half_voxel,
                                                            *ds.ImagePositionPatient[1:]])
    with pytest.raises(ValueError, match=r"seg\.dcm: SEG grid .* does not lie on the PET series' grid"):
        read_seg_mask(tmp_path / "seg.dcm", read_pet_series(series))


def test_other_pixel_spacing_is_refused(series, tmp_path):
    write_seg(box_mask(2, 5, 2, 5, 1, 3), series, tmp_path / "seg.dcm")
    rewrite_series(series, PixelSpacing=[DICOM_SPACING[1] * 1.5, DICOM_SPACING[0] * 1.5])
    with pytest.raises(ValueError, match=r"seg\.dcm: SEG grid \(spacing \[3\.0, 4\.0, 4\.0\] mm\) is not the PET"):
        read_seg_mask(tmp_path / "seg.dcm", read_pet_series(series))


def test_a_seg_finer_than_the_series_is_refused_not_subsampled(series, tmp_path):
    write_seg(box_mask(2, 5, 2, 5, 1, 3), series, tmp_path / "seg.dcm")
    rewrite_series(series, PixelSpacing=[DICOM_SPACING[1] * 2, DICOM_SPACING[0] * 2])
    with pytest.raises(ValueError, match=r"seg\.dcm: SEG grid \(spacing \[3\.0, 4\.0, 4\.0\] mm\) is not the PET "
                                         r"series' grid \(spacing \[3\.0, 8\.0, 8\.0\] mm\)"):
        read_seg_mask(tmp_path / "seg.dcm", read_pet_series(series))


def test_segment_reaching_outside_the_series_is_refused(series, tmp_path):
    write_seg(box_mask(2, 5, 2, 5, 9, 12), series, tmp_path / "seg.dcm")
    for path in sorted(series.glob("*.dcm"))[-2:]:  # the series loses its top two slices
        path.unlink()
    with pytest.raises(ValueError, match=r"seg\.dcm: 18 of 27 segmented voxels lie outside the PET series"):
        read_seg_mask(tmp_path / "seg.dcm", read_pet_series(series))


def test_a_pet_slice_is_not_a_seg(series):
    slice_file = sorted(series.glob("*.dcm"))[0]
    with pytest.raises(ValueError, match=rf"{slice_file.name}: not a DICOM SEG \(Modality PT"):
        read_seg_mask(slice_file, read_pet_series(series))


def test_write_refuses_an_existing_file_and_a_mask_of_another_shape(series, tmp_path):
    target = tmp_path / "seg.dcm"
    target.write_text("earlier")
    with pytest.raises(FileExistsError, match="seg.dcm: exists"):
        write_seg(box_mask(2, 5, 2, 5, 1, 3), series, target)
    assert target.read_text() == "earlier"
    with pytest.raises(ValueError, match=r"mask shape \(20, 18, 11\) is not the series' \(20, 18, 12\)"):
        write_seg(np.zeros((20, 18, 11), np.uint8), series, tmp_path / "other.dcm")
    assert not (tmp_path / "other.dcm").exists()


def test_write_refuses_a_series_without_study_attributes_naming_it(tmp_path):
    bare = write_dicom_series(tmp_path / "bare", dicom_raw(SHAPE))  # no StudyInstanceUID
    with pytest.raises(ValueError, match=r"bare: cannot make a DICOM SEG on this series: .*StudyInstanceUID"):
        write_seg(box_mask(2, 5, 2, 5, 1, 3), bare, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


# --------------------------------------------------------------------------- predict.py output_format=dicom-seg


def test_predict_writes_the_mask_as_a_seg_referencing_the_input_series(checkpoint, series, tmp_path):
    written = predict(predict_config(checkpoint, series, tmp_path / "out", output_format="dicom-seg", threshold=0.45))
    seg_file = tmp_path / "out" / "PT_7_a_seg.dcm"
    assert written[-1] == seg_file
    mask = np.asarray(nib.load(tmp_path / "out" / "PT_7_a_mask.nii.gz").dataobj)
    pet = read_pet_series(series)
    assert np.array_equal(read_seg_mask(seg_file, pet), mask)
    assert read_seg(seg_file).ReferencedSeriesSequence[0].SeriesInstanceUID == pet.series_uid
    assert 0 < mask.sum() < mask.size  # a mask with lesions and background: a flipped axis would show
    for path in written[:-1]:
        path.unlink()
    with pytest.raises(FileExistsError, match="PT_7_a_seg.dcm: exists"):  # refused before predicting again
        predict(predict_config(checkpoint, series, tmp_path / "out", output_format="dicom-seg"))
    assert not (tmp_path / "out" / "PT_7_a_mask.nii.gz").exists()


def test_predict_refuses_dicom_seg_for_nifti_input_and_unknown_formats(checkpoint, tmp_path):
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), image)
    with pytest.raises(ValueError, match=r"dicom-seg needs DICOM series inputs; \[.*scan\.nii\.gz'\]"):
        predict(predict_config(checkpoint, image, tmp_path / "out", output_format="dicom-seg"))
    with pytest.raises(ValueError, match=r"output_format='rtstruct' is not one of nifti, dicom-seg"):
        predict(predict_config(checkpoint, image, tmp_path / "out", output_format="rtstruct"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- predict.py seg=FILE


def test_predict_scores_a_dicom_case_against_its_seg(checkpoint, series, tmp_path):
    import csv

    truth = box_mask(3, 9, 4, 7, 2, 5)
    write_seg(truth, series, tmp_path / "truth.dcm", label="GTV primary", automatic=False)
    written = predict(predict_config(checkpoint, series, tmp_path / "out", seg=str(tmp_path / "truth.dcm"),
                                     segments=["GTV primary"], threshold=0.45))
    assert written[-1] == tmp_path / "out" / "metrics.csv"
    mask = np.asarray(nib.load(tmp_path / "out" / "PT_7_a_mask.nii.gz").dataobj) > 0
    expected = 2 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    with written[-1].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["case"] == "PT_7_a" and float(rows[0]["dice"]) == pytest.approx(expected, abs=1e-4)


def test_predict_refuses_a_seg_without_the_segment_before_predicting(checkpoint, series, tmp_path):
    write_seg(box_mask(3, 9, 4, 7, 2, 5), series, tmp_path / "truth.dcm", label="GTV primary")
    with pytest.raises(ValueError, match=r"\['Lymph node'\] not found; the SEG files have .*truth\.dcm: 1 'GTV primary'"):
        predict(predict_config(checkpoint, series, tmp_path / "out", seg=str(tmp_path / "truth.dcm"),
                               segments=["Lymph node"]))
    assert not (tmp_path / "out" / "PT_7_a_mask.nii.gz").exists()
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), image)
    with pytest.raises(ValueError, match=r"seg=\[.*truth\.dcm'\]: needs one DICOM series as input"):
        predict(predict_config(checkpoint, image, tmp_path / "out2", seg=str(tmp_path / "truth.dcm")))


def test_frames_spread_far_apart_are_refused_before_building_the_volume(series, tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[3, 3, 0] = mask[3, 3, 1] = mask[3, 3, 2] = 1
    write_seg(mask, series, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    position = seg.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence[0]
    position.ImagePositionPatient = [*position.ImagePositionPatient[:2], position.ImagePositionPatient[2] + 3e6]
    seg.save_as(tmp_path / "far.dcm")
    with pytest.raises(ValueError, match=r"far\.dcm: its frames span \(\d+, 18, 20\) voxels \(limit 268435456\)"):
        read_seg_mask(tmp_path / "far.dcm", read_pet_series(series))
