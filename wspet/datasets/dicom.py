"""Read a DICOM PET series into a volume in SUV (body weight) and write it as NIfTI.

Array layout: ``suv[i, j, k]`` with ``i`` the DICOM column index, ``j`` the DICOM row index
and ``k`` the slice index sorted by position along the slice normal (row x column
direction cosines), ascending. The affine maps (i, j, k) to nibabel's RAS+ world in mm
(DICOM LPS with x and y negated), so for an axial head-first-supine scan
``nib.aff2axcodes(affine) == ("L", "P", "S")``, the layout of the reference NIfTI files
in ``shared/data/sts-fdg-pet``.

SUV_bw = activity [Bq/ml] * weight [g] / decayed injected dose [Bq], see ``docs/dicom.md``
for the decay conventions and the errors raised.

CLI::

    python -m wspet.datasets.dicom SERIES_DIR OUT.nii.gz [--rtstruct FILE --roi NAME --mask-out MASK.nii.gz]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DA, DT, TM

from wspet.data.format import MAX_PLAUSIBLE_SUV, image_value_problems
from wspet.datasets.rtstruct import LPS_TO_RAS, rasterise_roi
from wspet.io import save_nifti

# Standard F-18 half-life (109.77 min) used when RadionuclideHalfLife is absent but the
# radionuclide code identifies F-18 (the QIBA/NEMA fallback).
F18_HALF_LIFE_S = 6586.2
_F18_CODE_VALUES = {"C-111A1", "77004003"}  # SNOMED RT / SNOMED CT codes for ^18^Fluorine
_F18_MEANINGS = {"18f", "^18^fluorine", "f-18", "f18", "fluorine-18", "fluorine18", "18-f"}

# Largest deviation of a slice position from the regular grid, as a fraction of the
# slice spacing; beyond it the series has missing, duplicated or irregular slices.
# Multi-bed scans jitter a little at bed boundaries (STS_001: up to 0.04 mm, 1.2% of
# 3.27 mm), while one missing slice moves positions by up to half a spacing.
SPACING_TOLERANCE = 0.05
# Largest difference between direction cosines of two slices.
ORIENTATION_TOLERANCE = 1e-4

# Beyond this a PatientWeight is not a person's weight in kg (grams? a corrupt header?).
MAX_PATIENT_WEIGHT_KG = 1000.0
# SUV is computed here from the header, so unlike a NIfTI file's voxels it cannot be in Bq/ml by
# mistake: a maximum above MAX_PLAUSIBLE_SUV is warned about, one above this is a wrong header value.
MAX_COMPUTED_SUV = 1e4

# Header values that SUV depends on; they must agree across the slices of one series.
_UNIFORM_TAGS = (
    "Units",
    "DecayCorrection",
    "PatientWeight",
    "SeriesDate",
    "SeriesTime",
    "Rows",
    "Columns",
    "PixelSpacing",
)


@dataclass
class PetVolume:
    """A PET series in SUV with the header values used to compute it.

    suv: float32 array (I, J, K) = (columns, rows, slices), SUV body weight [g/ml].
    affine: (4, 4) voxel (i, j, k) -> RAS+ world mm.
    decay_factors: (K,) fraction of the injected dose left at each slice's reference
        time (all equal for START; 1 for ADMIN; per slice acquisition time for NONE).
    injection_time: None only for ADMIN series without an injection time.
    scan_time: the START reference time (SeriesDate/SeriesTime), the earliest slice
        acquisition time for NONE, None for ADMIN.
    warnings: fallbacks used (e.g. the standard F-18 half-life), also issued with
        ``warnings.warn``.
    """

    suv: np.ndarray
    affine: np.ndarray
    series_dir: Path
    series_uid: str
    frame_of_reference_uid: str
    units: str
    decay_correction: str
    weight_kg: float
    dose_bq: float
    half_life_s: float | None
    injection_time: datetime | None
    scan_time: datetime | None
    decay_factors: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (i, j, k)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


# ---------------------------------------------------------------------------------------
# Reading and geometry
# ---------------------------------------------------------------------------------------


def load_series_datasets(series_dir: Path) -> list[Dataset]:
    """All image datasets of the single series in ``series_dir`` (unsorted).

    Files that are not DICOM, or DICOM without pixel data (RTSTRUCT, ...), are skipped.
    """
    if not series_dir.is_dir():
        raise ValueError(f"{series_dir}: not a directory")
    by_series: dict[str, list[Dataset]] = {}
    for path in sorted(p for p in series_dir.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError):
            continue
        if "PixelData" not in ds:
            continue
        ds.filename = str(path)
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if not by_series:
        raise ValueError(f"{series_dir}: no DICOM image files found")
    if len(by_series) > 1:
        listing = "; ".join(
            f"{uid or '<no SeriesInstanceUID>'} ({len(v)} files, "
            f"{v[0].get('Modality', '?')} '{v[0].get('SeriesDescription', '')}')"
            for uid, v in by_series.items()
        )
        raise ValueError(f"{series_dir}: several image series in one folder: {listing}")
    return next(iter(by_series.values()))


def _require(ds: Dataset, keyword: str, where: str) -> object:
    value = ds.get(keyword)
    if value is None or value == "":
        tag = pydicom.datadict.tag_for_keyword(keyword)
        tag_str = f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        raise ValueError(f"{where}: missing {keyword} {tag_str}".rstrip())
    return value


def _check_uniform(datasets: Sequence[Dataset], series_dir: Path) -> None:
    first = datasets[0]
    for keyword in _UNIFORM_TAGS:
        ref = first.get(keyword)
        for ds in datasets[1:]:
            # str() too: "NaN" in every slice is one value (refused later), not a disagreement.
            if ds.get(keyword) != ref and str(ds.get(keyword)) != str(ref):
                raise ValueError(
                    f"{series_dir}: {keyword} differs between slices: "
                    f"{ref!r} in {Path(first.filename).name} vs {ds.get(keyword)!r} "
                    f"in {Path(ds.filename).name}"
                )


def _orientation(datasets: Sequence[Dataset], series_dir: Path) -> np.ndarray:
    """(2, 3) row and column direction cosines (LPS), checked equal across slices."""
    iops = np.array(
        [[float(v) for v in _require(ds, "ImageOrientationPatient", str(series_dir))] for ds in datasets]
    )
    if iops.shape[1] != 6:
        raise ValueError(f"{series_dir}: ImageOrientationPatient has {iops.shape[1]} values, not 6")
    spread = np.abs(iops - iops[0]).max()
    if spread > ORIENTATION_TOLERANCE:
        raise ValueError(f"{series_dir}: ImageOrientationPatient differs between slices (max diff {spread:.3g})")
    return iops[0].reshape(2, 3)


def sort_and_affine(datasets: list[Dataset], series_dir: Path) -> tuple[list[Dataset], np.ndarray]:
    """Slices sorted along the slice normal, and the (4, 4) voxel -> RAS+ affine."""
    where = str(series_dir)
    if int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{series_dir}: multi-frame (enhanced) PET is not supported")
    row_dir, col_dir = _orientation(datasets, series_dir)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in _require(ds, "ImagePositionPatient", where)] for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    datasets = [datasets[i] for i in order]
    positions, along = positions[order], along[order]

    row_spacing, col_spacing = (float(v) for v in _require(datasets[0], "PixelSpacing", where))
    n = len(datasets)
    if n > 1:
        gaps = np.diff(along)
        if np.any(gaps <= 0):
            k = int(np.argmin(gaps))
            raise ValueError(
                f"{series_dir}: duplicate slice position {along[k]:.4f} mm "
                f"({Path(datasets[k].filename).name}, {Path(datasets[k + 1].filename).name}); "
                "dynamic or gated series are not supported"
            )
        step = (positions[-1] - positions[0]) / (n - 1)
        spacing = float(np.linalg.norm(step))
        expected = positions[0] + np.arange(n)[:, None] * step
        deviation = np.linalg.norm(positions - expected, axis=1)
        if deviation.max() > SPACING_TOLERANCE * spacing:
            raise ValueError(
                f"{series_dir}: inconsistent slice spacing: gaps between "
                f"{gaps.min():.4f} and {gaps.max():.4f} mm (mean {spacing:.4f} mm, "
                f"max deviation from a regular grid {deviation.max():.4f} mm)"
            )
        # A step not along the normal is gantry tilt: the grid would be sheared.
        if np.linalg.norm(np.cross(step / spacing, normal)) > SPACING_TOLERANCE:
            raise ValueError(f"{series_dir}: slices not stacked along the slice normal (gantry tilt?)")
    else:
        thickness = datasets[0].get("SpacingBetweenSlices") or _require(datasets[0], "SliceThickness", where)
        step = normal * float(thickness)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: along a row, i.e. across columns
    lps[:3, 1] = col_dir * row_spacing  # j: down a column, i.e. across rows
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return datasets, LPS_TO_RAS @ lps


def _activity(datasets: Sequence[Dataset], series_dir: Path) -> np.ndarray:
    """(I, J, K) float64 stored values after each slice's own rescale slope/intercept.

    Refused, naming the file and tag: a slope that is not finite and > 0, an intercept that is not
    finite, pixel data that cannot be decoded (truncated, or not Rows x Columns).
    """
    planes = []
    for ds in datasets:
        where = f"{series_dir}/{Path(ds.filename).name}"
        slope = _number(ds, "RescaleSlope", where)
        intercept = _number(ds, "RescaleIntercept", where)
        if not slope > 0:
            raise ValueError(f"{where}: RescaleSlope (0028,1053) is {slope}, not > 0")
        try:
            pixels = ds.pixel_array
        except Exception as error:  # pydicom's errors name neither the file nor the tag
            raise ValueError(
                f"{where}: PixelData (7FE0,0010) cannot be decoded as Rows {ds.get('Rows')} x Columns "
                f"{ds.get('Columns')}, {ds.get('BitsAllocated')} bits (truncated?): {_first_line(error)}"
            ) from None
        planes.append(pixels.astype(np.float64).T * slope + intercept)
    return np.stack(planes, axis=-1)


def _number(ds: Dataset, keyword: str, where: str) -> float:
    """A required numeric tag as a finite float; ValueError naming ``where`` and the tag otherwise."""
    value = _require(ds, keyword, where)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number):
        raise ValueError(f"{where}: {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) is {value!r}, not a finite number")
    return number


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# ---------------------------------------------------------------------------------------
# SUV
# ---------------------------------------------------------------------------------------


def _date(value: object) -> date | None:
    return DA(str(value)) if value not in (None, "") else None


def _time(value: object) -> time | None:
    return TM(str(value)) if value not in (None, "") else None


def _combine(day: date | None, clock: time | None) -> datetime | None:
    if day is None or clock is None:
        return None
    return datetime.combine(day, clock.replace(tzinfo=None))


def _naive(value: datetime) -> datetime:
    # Offsets are dropped: DICOM times of one study are in the same local time.
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond)


def _injection_time(ds: Dataset, radio: Dataset, series_dir: Path) -> datetime | None:
    start_dt = radio.get("RadiopharmaceuticalStartDateTime")
    if start_dt not in (None, ""):
        return _naive(DT(str(start_dt)))
    clock = _time(radio.get("RadiopharmaceuticalStartTime"))
    if clock is None:
        return None
    day = _date(ds.get("SeriesDate")) or _date(ds.get("AcquisitionDate"))
    if day is None:
        raise ValueError(
            f"{series_dir}: RadiopharmaceuticalStartTime {radio.RadiopharmaceuticalStartTime} "
            "given without RadiopharmaceuticalStartDateTime, SeriesDate or AcquisitionDate"
        )
    return _combine(day, clock)


def _acquisition_time(ds: Dataset) -> datetime | None:
    value = ds.get("AcquisitionDateTime")
    if value not in (None, ""):
        return _naive(DT(str(value)))
    return _combine(_date(ds.get("AcquisitionDate")), _time(ds.get("AcquisitionTime")))


def _half_life(radio: Dataset, series_dir: Path, notes: list[str]) -> float:
    value = radio.get("RadionuclideHalfLife")
    if value not in (None, ""):
        half_life = float(value)
        if not half_life > 0:
            raise ValueError(f"{series_dir}: RadionuclideHalfLife (0018,1075) is {half_life}, not > 0")
        return half_life
    codes = radio.get("RadionuclideCodeSequence") or []
    for code in codes:
        meaning = str(code.get("CodeMeaning", "")).strip().lower()
        if str(code.get("CodeValue", "")) in _F18_CODE_VALUES or meaning in _F18_MEANINGS:
            notes.append(
                f"{series_dir}: RadionuclideHalfLife (0018,1075) missing; radionuclide code "
                f"says F-18, using the standard half-life {F18_HALF_LIFE_S} s"
            )
            return F18_HALF_LIFE_S
    raise ValueError(
        f"{series_dir}: missing RadionuclideHalfLife (0018,1075) and the radionuclide "
        f"code {[str(c.get('CodeMeaning', c.get('CodeValue', ''))) for c in codes]} is not F-18"
    )


def _decay(dose_left_at: datetime, injection: datetime, half_life_s: float, series_dir: Path) -> float:
    elapsed = (dose_left_at - injection).total_seconds()
    if elapsed < 0:
        raise ValueError(
            f"{series_dir}: injection time {injection.isoformat()} is after the scan "
            f"reference time {dose_left_at.isoformat()}"
        )
    return math.exp(-math.log(2.0) * elapsed / half_life_s)


def _start_reference_time(datasets: Sequence[Dataset], series_dir: Path, notes: list[str]) -> datetime:
    """START decay reference: SeriesDate/SeriesTime (QIBA/PERCIST convention).

    QIBA fallback: when SeriesTime is missing, or later than the earliest acquisition
    (a series re-created after the scan), the earliest slice acquisition time is used.
    """
    first = datasets[0]
    series_day = _date(first.get("SeriesDate")) or _date(first.get("AcquisitionDate"))
    series_time = _combine(series_day, _time(first.get("SeriesTime")))
    acquired = [t for t in (_acquisition_time(ds) for ds in datasets) if t is not None]
    earliest = min(acquired) if acquired else None
    if series_time is None:
        if earliest is None:
            raise ValueError(f"{series_dir}: DecayCorrection START needs SeriesDate/SeriesTime (0008,0021)/(0008,0031)")
        notes.append(
            f"{series_dir}: SeriesTime missing; decay reference is the earliest AcquisitionTime {earliest.isoformat()}"
        )
        return earliest
    if earliest is not None and series_time > earliest:
        notes.append(
            f"{series_dir}: SeriesTime {series_time.isoformat()} is after the earliest acquisition "
            f"{earliest.isoformat()}; decay reference is the earliest acquisition (QIBA)"
        )
        return earliest
    return series_time


def _decay_factors(
    datasets: Sequence[Dataset], decay_correction: str, radio: Dataset, series_dir: Path, notes: list[str]
) -> tuple[np.ndarray, datetime | None, datetime | None, float | None]:
    """Per slice fraction of the dose left, the injection and scan times, and the half-life."""
    injection = _injection_time(datasets[0], radio, series_dir)
    if decay_correction == "ADMIN":
        half_life = _half_life(radio, series_dir, []) if radio.get("RadionuclideHalfLife") else None
        return np.ones(len(datasets)), injection, None, half_life
    if injection is None:
        raise ValueError(
            f"{series_dir}: DecayCorrection {decay_correction} needs the injection time: "
            "missing RadiopharmaceuticalStartDateTime (0018,1078) and RadiopharmaceuticalStartTime (0018,1072)"
        )
    half_life = _half_life(radio, series_dir, notes)
    if decay_correction == "START":
        scan = _start_reference_time(datasets, series_dir, notes)
        factor = _decay(scan, injection, half_life, series_dir)
        return np.full(len(datasets), factor), injection, scan, half_life
    if decay_correction == "NONE":
        times = []
        for ds in datasets:
            t = _acquisition_time(ds)
            if t is None:
                raise ValueError(
                    f"{series_dir}/{Path(ds.filename).name}: DecayCorrection NONE needs "
                    "AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032)"
                )
            times.append(t)
        factors = np.array([_decay(t, injection, half_life, series_dir) for t in times])
        return factors, injection, min(times), half_life
    raise ValueError(f"{series_dir}: DecayCorrection (0054,1102) {decay_correction!r} is not START, ADMIN or NONE")


def read_pet_series(series_dir: str | os.PathLike) -> PetVolume:
    """Read the PET series in ``series_dir`` and convert it to SUV body weight.

    Returns a PetVolume with ``suv`` of shape (columns, rows, slices). Raises ValueError
    (message starting with the folder) for units other than BQML, missing weight, dose,
    injection time or half-life, irregular slice spacing, or several series in the folder.
    """
    series_dir = Path(series_dir)
    datasets = load_series_datasets(series_dir)
    where = str(series_dir)
    first = datasets[0]
    for ds in datasets:  # one CT slice among PT ones would be scaled as activity
        if ds.get("Modality") != "PT":
            raise ValueError(f"{series_dir}/{Path(ds.filename).name}: Modality (0008,0060) is {ds.get('Modality')!r}, not 'PT'")
    _check_uniform(datasets, series_dir)
    expected_n = first.get("NumberOfSlices")
    if expected_n not in (None, "") and int(expected_n) != len(datasets):
        raise ValueError(f"{series_dir}: NumberOfSlices (0054,0081) is {expected_n} but {len(datasets)} slices found")

    units = str(_require(first, "Units", where)).strip().upper()
    if units != "BQML":
        raise ValueError(f"{series_dir}: Units (0054,1001) is {units!r}; only BQML can be converted to SUV")
    weight_kg = _number(first, "PatientWeight", where)
    if not 0 < weight_kg <= MAX_PATIENT_WEIGHT_KG:
        raise ValueError(
            f"{series_dir}: PatientWeight (0010,1030) is {weight_kg} kg, not in (0, {MAX_PATIENT_WEIGHT_KG:g}] kg"
        )
    radio_seq = _require(first, "RadiopharmaceuticalInformationSequence", where)
    if len(radio_seq) == 0:
        raise ValueError(f"{series_dir}: RadiopharmaceuticalInformationSequence (0054,0016) is empty")
    radio = radio_seq[0]
    dose_bq = _number(radio, "RadionuclideTotalDose", where)
    if not dose_bq > 0:
        raise ValueError(f"{series_dir}: RadionuclideTotalDose (0018,1074) is {dose_bq} Bq, not > 0")
    decay_correction = str(_require(first, "DecayCorrection", where)).strip().upper()

    datasets, affine = sort_and_affine(datasets, series_dir)
    notes: list[str] = []
    try:
        factors, injection, scan, half_life = _decay_factors(datasets, decay_correction, radio, series_dir, notes)
    except ValueError as err:
        if str(err).startswith(str(series_dir)):
            raise
        # pydicom's DA/TM/DT parsers name the bad value but not the file.
        raise ValueError(f"{series_dir}: unreadable date/time: {err}") from err
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)

    activity = _activity(datasets, series_dir)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf: refused just below
        suv = (activity * (weight_kg * 1000.0) / (dose_bq * factors)).astype(np.float32)
    problems = image_value_problems(suv)  # the checks a NIfTI image gets (wspet.data.format.load_image)
    if problems:
        raise ValueError(
            f"{series_dir}: SUV from PatientWeight {weight_kg:g} kg, RadionuclideTotalDose {dose_bq:g} Bq and the"
            f" slices' RescaleSlope/RescaleIntercept: {'; '.join(problems)}"
        )
    high = float(suv.max())
    if high > MAX_COMPUTED_SUV:
        raise ValueError(
            f"{series_dir}: maximum SUV {high:.4g} is not a plausible SUV (> {MAX_COMPUTED_SUV:g}); check PatientWeight"
            f" {weight_kg:g} kg, RadionuclideTotalDose {dose_bq:g} Bq and the slices' RescaleSlope (0028,1053)"
        )
    if high > MAX_PLAUSIBLE_SUV:
        notes.append(f"{series_dir}: maximum SUV {high:.4g} is not plausible (> {MAX_PLAUSIBLE_SUV:g}); "
                     f"check PatientWeight {weight_kg:g} kg and RadionuclideTotalDose {dose_bq:g} Bq")
        warnings.warn(notes[-1], UserWarning, stacklevel=2)
    return PetVolume(
        suv=suv,
        affine=affine,
        series_dir=series_dir,
        series_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        units=units,
        decay_correction=decay_correction,
        weight_kg=weight_kg,
        dose_bq=dose_bq,
        half_life_s=half_life,
        injection_time=injection,
        scan_time=scan,
        decay_factors=factors,
        warnings=notes,
    )


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def series_to_suv_nifti(series_dir: str | os.PathLike, out_path: str | os.PathLike) -> PetVolume:
    """Read ``series_dir`` to SUV and write it to ``out_path`` (float32 NIfTI); returns the volume."""
    volume = read_pet_series(series_dir)
    save_nifti(volume.suv, volume.affine, out_path)
    return volume


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wspet.datasets.dicom",
        description="Convert a DICOM PET series to a NIfTI volume in SUV (body weight).",
    )
    parser.add_argument("series_dir", type=Path, help="folder holding one PET series")
    parser.add_argument("out", type=Path, help="output .nii.gz")
    parser.add_argument("--rtstruct", type=Path, help="RT structure set to rasterise on the PET grid")
    parser.add_argument("--roi", help="ROI name in the RT structure set (e.g. GTV_Mass)")
    parser.add_argument("--mask-out", type=Path, help="output mask .nii.gz (uint8)")
    args = parser.parse_args(argv)
    mask_args = (args.rtstruct, args.roi, args.mask_out)
    if any(a is not None for a in mask_args) and not all(a is not None for a in mask_args):
        parser.error("--rtstruct, --roi and --mask-out go together")

    try:
        volume = series_to_suv_nifti(args.series_dir, args.out)
        print(f"{args.out}: SUV {volume.suv.shape}, max {float(volume.suv.max()):.3f}, spacing {volume.spacing}")
        if args.rtstruct is not None:
            mask = rasterise_roi(args.rtstruct, args.roi, volume)
            save_nifti(mask, volume.affine, args.mask_out)
            print(f"{args.mask_out}: {args.roi} {int(mask.sum())} voxels")
    except (ValueError, OSError) as error:  # bad input: the message names the file; no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
