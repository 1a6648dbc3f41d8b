"""Rasterise an RT structure set ROI onto a PET voxel grid.

Contours are closed planar polygons in DICOM patient coordinates (LPS, mm). Each is
mapped through the inverse of the grid's RAS+ affine to voxel indices (i, j, k), assigned
to the nearest slice k and filled in the (i, j) plane: a voxel is inside when its centre
is inside the polygon. Contours of one ROI in the same plane are combined with XOR
(even-odd rule), so a contour drawn inside another is a hole; contour planes that fall
between slices of the grid (contours drawn on a finer CT grid) go to the nearest slice,
combined with OR, and a warning is issued.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from skimage.draw import polygon as fill_polygon

# DICOM patient coordinates (LPS) to nibabel's RAS+ world: x and y negated.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# A contour must lie within this many slices of one plane of the grid: contours drawn on
# oblique planes, or on another grid's slices far from ours, cannot be filled per slice.
PLANE_TOLERANCE = 0.1


def _read_rtstruct(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({err})") from err
    if ds.get("Modality") != "RTSTRUCT":
        raise ValueError(f"{path}: Modality is {ds.get('Modality')!r}, not 'RTSTRUCT'")
    return ds


def roi_names(rtstruct_path: str | os.PathLike) -> list[str]:
    """Names of the ROIs in the structure set, in file order."""
    ds = _read_rtstruct(Path(rtstruct_path))
    return [str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])]


def _find_roi(ds: Dataset, roi_name: str, path: Path) -> Dataset:
    rois = list(ds.get("StructureSetROISequence", []))
    for roi in rois:
        if str(roi.ROIName) == roi_name:
            return roi
    names = [str(r.ROIName) for r in rois]
    raise ValueError(f"{path}: no ROI named {roi_name!r}; available: {names}")


def _contours(ds: Dataset, roi_number: int, path: Path, roi_name: str) -> list[np.ndarray]:
    """Closed planar contours of the ROI as (N, 3) LPS mm arrays."""
    for item in ds.get("ROIContourSequence", []):
        if int(item.ReferencedROINumber) != roi_number:
            continue
        contours = []
        for contour in item.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "")).upper()
            if kind != "CLOSED_PLANAR":
                message = f"{path}: ROI {roi_name!r}: skipped a {kind or 'untyped'} contour"
                warnings.warn(message, UserWarning, stacklevel=3)
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
            if points.size % 3 != 0 or points.size < 9:
                raise ValueError(
                    f"{path}: ROI {roi_name!r}: ContourData has {points.size} values, not 3 x N with N >= 3"
                )
            contours.append(points.reshape(-1, 3))
        return contours
    return []


def _reference_grid(
    reference: Any, frame_of_reference_uid: str | None
) -> tuple[np.ndarray, tuple[int, int, int], str | None]:
    if isinstance(reference, tuple):
        affine, shape = reference
        return np.asarray(affine, dtype=np.float64), tuple(int(s) for s in shape), frame_of_reference_uid
    uid = frame_of_reference_uid or reference.frame_of_reference_uid or None
    return reference.affine, tuple(reference.suv.shape), uid


def rasterise_roi(
    rtstruct_path: str | os.PathLike,
    roi_name: str,
    reference: Any,
    frame_of_reference_uid: str | None = None,
) -> np.ndarray:
    """Mask of ROI ``roi_name`` on the grid of ``reference``.

    reference: a PetVolume (:mod:`wspet.datasets.dicom`), or ``(affine, shape)`` with a (4, 4) voxel -> RAS+ affine and
        the 3-D grid shape (I, J, K); its slices (k) must be the planes of the contours.
    frame_of_reference_uid: the grid's FrameOfReferenceUID (taken from a PetVolume when
        not given); when known, the ROI's frame of reference must match it.
    Returns uint8 (I, J, K) with 1 inside. Contours on slices outside the grid are
    dropped with a warning; contours between slices go to the nearest one, with a
    warning; an ROI with no contours gives an all-zero mask and a warning.
    Raises ValueError for an unknown ROI name (listing the names), a different frame of
    reference (naming both UIDs), or a contour not in one plane of constant k.
    """
    path = Path(rtstruct_path)
    affine, shape, grid_uid = _reference_grid(reference, frame_of_reference_uid)
    if len(shape) != 3 or affine.shape != (4, 4):
        raise ValueError(f"{path}: reference needs a (4, 4) affine and a 3-D shape, got {affine.shape} and {shape}")
    ds = _read_rtstruct(path)
    roi = _find_roi(ds, roi_name, path)
    roi_uid = str(roi.get("ReferencedFrameOfReferenceUID", ""))
    if grid_uid and roi_uid and roi_uid != grid_uid:
        raise ValueError(
            f"{path}: ROI {roi_name!r} FrameOfReferenceUID {roi_uid} != image FrameOfReferenceUID {grid_uid}"
        )

    contours = _contours(ds, int(roi.ROINumber), path, roi_name)
    mask = np.zeros(shape, dtype=np.uint8)
    if not contours:
        warnings.warn(f"{path}: ROI {roi_name!r} has no closed contours; mask is empty", UserWarning, stacklevel=2)
        return mask

    world_to_voxel = np.linalg.inv(affine) @ LPS_TO_RAS
    # Even-odd filling holds within one contour plane; planes of a finer grid (e.g. CT
    # contours) that round to the same PET slice are combined with OR, so they cannot
    # cancel each other.
    planes: dict[float, np.ndarray] = {}
    outside = 0
    for points in contours:
        ijk = points @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
        k_values = ijk[:, 2]
        if np.ptp(k_values) > PLANE_TOLERANCE:
            raise ValueError(
                f"{path}: ROI {roi_name!r}: a contour spans slices {k_values.min():.2f} to {k_values.max():.2f}, "
                "not one slice plane of the grid"
            )
        plane_k = round(float(k_values.mean()), 3)
        if not -0.5 <= plane_k < shape[2] - 0.5:
            outside += 1
            continue
        rows, cols = fill_polygon(ijk[:, 0], ijk[:, 1], shape=shape[:2])
        filled = np.zeros(shape[:2], dtype=bool)
        filled[rows, cols] = True
        planes[plane_k] = planes.get(plane_k, np.zeros(shape[:2], dtype=bool)) ^ filled
    off_slice = [k for k in planes if abs(k - round(k)) > PLANE_TOLERANCE]
    if off_slice:
        warnings.warn(
            f"{path}: ROI {roi_name!r}: {len(off_slice)} contour plane(s) between grid slices "
            f"(e.g. k = {off_slice[0]}); assigned to the nearest slice",
            UserWarning,
            stacklevel=2,
        )
    for plane_k, filled in planes.items():
        mask[:, :, int(np.floor(plane_k + 0.5))] |= filled.astype(np.uint8)
    if outside:
        message = f"{path}: ROI {roi_name!r}: {outside} contour(s) on slices outside the grid dropped"
        warnings.warn(message, UserWarning, stacklevel=2)
    return mask
