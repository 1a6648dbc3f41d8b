"""Tests for wspet.datasets.rtstruct: RT structure set ROI -> mask on a PET grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from wspet.datasets.dicom import PetVolume
from wspet.datasets.rtstruct import rasterise_roi, roi_names

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
STS_001_DICOM = DATA / "sts-fdg-pet-dicom" / "STS_001" / "FDG_PET"
STS_001_NIFTI = DATA / "sts-fdg-pet" / "STS_001"

FRAME_UID = "1.2.3.4.5"
SHAPE = (10, 12, 4)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Axial LPS grid, 2 x 2.5 x 4 mm, offset so that an LPS/RAS sign slip lands off the grid.
AFFINE_LPS = np.array([[2.0, 0, 0, -50.0], [0, 2.5, 0, 40.0], [0, 0, 4.0, 10.0], [0, 0, 0, 1]])
AFFINE = LPS_TO_RAS @ AFFINE_LPS


def voxel_to_lps(ijk: np.ndarray) -> np.ndarray:
    """(N, 3) voxel coordinates -> (N, 3) LPS mm on the test grid."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ AFFINE_LPS[:3, :3].T + AFFINE_LPS[:3, 3]


def square(i0: float, i1: float, j0: float, j1: float, k: float) -> np.ndarray:
    """Closed square contour in LPS mm with corners at voxel coordinates."""
    return voxel_to_lps([[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]])


def write_rtstruct(
    path: Path,
    rois: dict[str, list[np.ndarray]],
    frame_uid: str = FRAME_UID,
    geometric_type: str = "CLOSED_PLANAR",
) -> Path:
    """Minimal RT structure set: one ROI per name, contours as (N, 3) LPS arrays."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    structure_rois, roi_contours = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        structure_rois.append(roi)
        items = []
        for points in contours:
            item = Dataset()
            item.ContourGeometricType = geometric_type
            item.NumberOfContourPoints = len(points)
            item.ContourData = [round(float(v), 6) for v in np.asarray(points).reshape(-1)]
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ContourSequence = Sequence(items)
        roi_contours.append(roi_contour)
    ds.StructureSetROISequence = Sequence(structure_rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_square_with_hole_is_filled_even_odd(tmp_path):
    outer = square(0.5, 6.5, 1.5, 8.5, k=2)  # voxel centres i 1..6, j 2..8
    hole = square(2.5, 4.5, 3.5, 5.5, k=2)  # voxel centres i 3..4, j 4..5
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": [outer, hole], "Other": [square(0, 3, 0, 3, k=0)]})
    mask = rasterise_roi(path, "GTV", (AFFINE, SHAPE), frame_of_reference_uid=FRAME_UID)
    expected = np.zeros(SHAPE, np.uint8)
    expected[1:7, 2:9, 2] = 1
    expected[3:5, 4:6, 2] = 0
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)
    assert int(mask.sum()) == 6 * 7 - 2 * 2


def test_hole_listed_first_gives_same_mask(tmp_path):
    outer, hole = square(0.5, 6.5, 1.5, 8.5, k=1), square(2.5, 4.5, 3.5, 5.5, k=1)
    a = rasterise_roi(write_rtstruct(tmp_path / "a.dcm", {"GTV": [outer, hole]}), "GTV", (AFFINE, SHAPE))
    b = rasterise_roi(write_rtstruct(tmp_path / "b.dcm", {"GTV": [hole, outer]}), "GTV", (AFFINE, SHAPE))
    np.testing.assert_array_equal(a, b)
    assert int(a.sum()) == 38


def test_contours_go_to_their_own_slices(tmp_path):
    contours = [square(0.5, 2.5, 0.5, 1.5, k=0), square(4.5, 9.5, 5.5, 11.5, k=3)]
    mask = rasterise_roi(write_rtstruct(tmp_path / "rt.dcm", {"GTV": contours}), "GTV", (AFFINE, SHAPE))
    assert mask[:, :, 0].sum() == 2 and mask[1:3, 1, 0].all()
    assert mask[:, :, 3].sum() == 5 * 6 and mask[5:10, 6:12, 3].all()
    assert mask[:, :, 1:3].sum() == 0


def test_finer_contour_planes_join_nearest_slice_with_or(tmp_path):
    # Two CT-like planes at k = 1.8 and 2.2 overlap; XOR across them would cut a hole.
    contours = [square(0.5, 4.5, 0.5, 4.5, k=1.8), square(2.5, 6.5, 2.5, 6.5, k=2.2)]
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": contours})
    with pytest.warns(UserWarning, match="between grid slices"):
        mask = rasterise_roi(path, "GTV", (AFFINE, SHAPE))
    expected = np.zeros(SHAPE[:2], np.uint8)
    expected[1:5, 1:5] = 1
    expected[3:7, 3:7] = 1
    np.testing.assert_array_equal(mask[:, :, 2], expected)
    assert mask.sum() == expected.sum() == 28


def test_pet_volume_reference_and_frame_of_reference_check(tmp_path):
    volume = PetVolume(
        suv=np.zeros(SHAPE, np.float32), affine=AFFINE, series_dir=tmp_path, series_uid="1.9",
        frame_of_reference_uid=FRAME_UID, units="BQML", decay_correction="START", weight_kg=70.0,
        dose_bq=3.7e8, half_life_s=6588.0, injection_time=None, scan_time=None, decay_factors=np.ones(4),
    )
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": [square(0.5, 3.5, 0.5, 3.5, k=1)]})
    assert rasterise_roi(path, "GTV", volume).sum() == 9
    other = write_rtstruct(tmp_path / "other.dcm", {"GTV": [square(0.5, 3.5, 0.5, 3.5, k=1)]}, frame_uid="9.9.9")
    with pytest.raises(ValueError, match="9.9.9.*1.2.3.4.5") as err:
        rasterise_roi(other, "GTV", volume)
    assert str(err.value).startswith(str(other))


def test_unknown_roi_lists_names(tmp_path):
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV_Mass": [square(0, 2, 0, 2, 0)], "GTV_Edema": []})
    assert roi_names(path) == ["GTV_Mass", "GTV_Edema"]
    with pytest.raises(ValueError, match=r"'Tumour'.*\['GTV_Mass', 'GTV_Edema'\]"):
        rasterise_roi(path, "Tumour", (AFFINE, SHAPE))


def test_empty_roi_warns_and_gives_empty_mask(tmp_path):
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": []})
    with pytest.warns(UserWarning, match="no closed contours"):
        mask = rasterise_roi(path, "GTV", (AFFINE, SHAPE))
    assert mask.shape == SHAPE and mask.sum() == 0


def test_contour_outside_grid_dropped_with_warning(tmp_path):
    contours = [square(0.5, 2.5, 0.5, 2.5, k=9), square(0.5, 2.5, 0.5, 2.5, k=0)]
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": contours})
    with pytest.warns(UserWarning, match="1 contour"):
        mask = rasterise_roi(path, "GTV", (AFFINE, SHAPE))
    assert mask.sum() == 4


def test_oblique_contour_rejected(tmp_path):
    tilted = voxel_to_lps([[0, 0, 0], [5, 0, 0], [5, 5, 1], [0, 5, 1]])
    path = write_rtstruct(tmp_path / "rt.dcm", {"GTV": [tilted]})
    with pytest.raises(ValueError, match="not one slice plane"):
        rasterise_roi(path, "GTV", (AFFINE, SHAPE))


def test_not_an_rtstruct_rejected(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"nothing")
    with pytest.raises(ValueError, match="x.dcm"):
        rasterise_roi(path, "GTV", (AFFINE, SHAPE))


@settings(max_examples=40, deadline=None)
@given(
    centre=st.tuples(st.floats(2.0, 8.0), st.floats(2.0, 10.0)),
    radii=st.lists(st.floats(0.8, 4.0), min_size=5, max_size=9),
    phase=st.floats(0.0, 6.28),
)
def test_filled_voxels_are_those_whose_centres_are_inside(tmp_path_factory, centre, radii, phase):
    """Star-shaped polygons: the mask equals a matplotlib point-in-polygon test at voxel centres."""
    angles = phase + np.linspace(0.0, 2 * np.pi, len(radii), endpoint=False)
    ij = np.stack([centre[0] + np.array(radii) * np.cos(angles), centre[1] + np.array(radii) * np.sin(angles)], axis=1)
    points = voxel_to_lps(np.column_stack([ij, np.full(len(ij), 1.0)]))
    path = write_rtstruct(tmp_path_factory.mktemp("rt") / "rt.dcm", {"GTV": [points]})
    mask = rasterise_roi(path, "GTV", (AFFINE, SHAPE))
    centres = np.indices(SHAPE[:2]).reshape(2, -1).T
    inside = MplPath(ij).contains_points(centres).reshape(SHAPE[:2])
    # Only centres on an edge (to ContourData's rounding) may go either way.
    differ = centres[(mask[:, :, 1].astype(bool) != inside).reshape(-1)]
    assert all(_on_edge(ij, p) for p in differ), differ
    assert mask[:, :, [0, 2, 3]].sum() == 0


def _on_edge(polygon: np.ndarray, point: np.ndarray, tol: float = 1e-4) -> bool:
    """True when ``point`` lies within ``tol`` of an edge of the closed (N, 2) polygon."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab, ap = b - a, point - a
    t = np.clip(np.sum(ap * ab, axis=1) / np.sum(ab * ab, axis=1), 0.0, 1.0)
    return bool(np.min(np.linalg.norm(ap - t[:, None] * ab, axis=1)) <= tol)


# ---------------------------------------------------------------------------------------
# Real data: STS_001 (TCIA Soft-tissue-Sarcoma, CC BY 3.0; see docs/dicom.md)
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not STS_001_DICOM.is_dir() or not STS_001_NIFTI.is_dir(), reason=f"real data not found at {DATA}")
def test_sts001_gtv_mass_matches_reference_mask():
    from wspet.datasets.dicom import read_pet_series

    volume = read_pet_series(STS_001_DICOM / "image")
    mask = rasterise_roi(STS_001_DICOM / "mask" / "1-1.dcm", "GTV_Mass", volume)
    ref = nib.load(STS_001_NIFTI / "PET_mask.nii.gz")
    ijk = np.indices(ref.shape).reshape(3, -1)
    world = ref.affine[:3, :3] @ ijk + ref.affine[:3, 3:]
    to_grid = np.linalg.inv(volume.affine)
    idx = np.rint(to_grid[:3, :3] @ world + to_grid[:3, 3:]).astype(int)
    ours = mask[idx[0], idx[1], idx[2]] > 0
    theirs = np.asarray(ref.dataobj).reshape(-1) > 0
    dice = 2.0 * np.sum(ours & theirs) / (ours.sum() + theirs.sum())
    print(f"STS_001 GTV_Mass vs reference mask: Dice {dice:.4f} ({ours.sum()} vs {theirs.sum()} voxels; "
          f"{int(mask.sum())} in the whole scan)")
    assert dice > 0.9  # measured 1.0
    assert int(mask.sum()) == int(ours.sum())  # nothing outside the reference crop
