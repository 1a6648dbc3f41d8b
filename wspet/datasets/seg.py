"""DICOM SEG (Segmentation objects) in and out, on the grid of a PET series, with highdicom.

TCIA's QIN-HEADNECK collection, the paper's data, carries its lesion segmentations as DICOM SEG
objects beside the PET series; clinical viewers (3D Slicer, OHIF, PACS) take SEG.

- :func:`read_seg_mask`: the union of the chosen segments of one or several SEG files as a
  binary mask (I, J, K) on the grid of a PET series read by :func:`wspet.datasets.dicom.read_pet_series`.
  Segments are chosen by label (``SegmentLabel``, case-insensitive) or number; a SEG must share
  the series' frame of reference, and its frames must lie on the series' grid (same axes and
  spacing, whole-voxel offsets; frames outside the grid are refused, never cropped away).
- :func:`write_seg`: a binary mask (I, J, K) on a series' grid as a one-segment SEG that references
  the series' instances, written atomically and never over an existing file unless asked.

Every error is a ValueError naming the file. See docs/dicom.md.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from wspet.datasets.dicom import LPS_TO_RAS, SPACING_TOLERANCE, PetVolume, load_series_datasets, sort_and_affine
from wspet.data.format import MAX_VOXELS
from wspet.io import new_folder_mode, publish

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
# Largest angle cosine deficit between a SEG axis and the PET axis it lies along (about 2.6 deg).
AXIS_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SeriesGrid:
    """What a SEG is checked and placed against: a series' voxel grid and frame of reference.

    affine: (4, 4) voxel (i, j, k) -> RAS+ mm, as :class:`wspet.datasets.dicom.PetVolume`'s; shape: (I, J, K).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    frame_of_reference_uid: str
    series_dir: Path

    @classmethod
    def of(cls, pet: PetVolume) -> SeriesGrid:
        return cls(pet.affine, tuple(pet.suv.shape), pet.frame_of_reference_uid, Path(pet.series_dir))


def series_frame_of_reference(series_dir: str | os.PathLike) -> str:
    """The FrameOfReferenceUID of the first readable DICOM image file in ``series_dir`` ('' if none)."""
    for path in sorted(p for p in Path(series_dir).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
        except (InvalidDicomError, OSError):
            continue
        return str(header.get("FrameOfReferenceUID", ""))
    return ""


def _wspet_version() -> str:
    try:
        return version("wspet")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- reading


def read_seg(path: str | os.PathLike) -> hd.seg.Segmentation:
    """The Segmentation in ``path``; ValueError naming the file for anything else."""
    path = Path(path)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as error:
        raise ValueError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    if str(header.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID:
        raise ValueError(f"{path}: not a DICOM SEG (Modality {header.get('Modality', '?')}, "
                         f"SOPClassUID {header.get('SOPClassUID', '?')})")
    size = [int(header.get(k) or 1) for k in ("NumberOfFrames", "Rows", "Columns")]
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise ValueError(f"{path}: NumberOfFrames x Rows x Columns {size} is too large for a mask (limit {MAX_VOXELS} voxels)")
    try:
        return hd.seg.segread(path)
    except Exception as error:  # highdicom's errors name neither the file nor, often, the tag
        raise ValueError(f"{path}: not a valid DICOM SEG: {type(error).__name__}: {error}") from None


def segment_labels(seg: hd.seg.Segmentation) -> dict[int, str]:
    """``{SegmentNumber: SegmentLabel}`` of ``seg``."""
    return {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.SegmentSequence}


def choose_segments(seg: hd.seg.Segmentation, segments: Sequence[str | int] | None) -> list[int]:
    """The numbers of the segments of ``seg`` that ``segments`` names (every segment when None).

    A name that is a whole number picks the segment of that number, any other the segments whose
    label it is (case-insensitive). Names matching nothing in this SEG are ignored here.
    """
    labels = segment_labels(seg)
    if segments is None:
        return sorted(labels)
    chosen = set()
    for wanted in segments:
        text = str(wanted).strip()
        if text.isdigit() and int(text) in labels:
            chosen.add(int(text))
        chosen |= {n for n, label in labels.items() if label.strip().lower() == text.lower()}
    return sorted(chosen)


def _pet_geometry(pet: SeriesGrid) -> hd.VolumeGeometry:
    """The series' grid as highdicom sees it: axes (slice, row, column), LPS mm."""
    lps = np.linalg.inv(LPS_TO_RAS) @ pet.affine
    return hd.VolumeGeometry(lps[:, [2, 1, 0, 3]], pet.shape[::-1], "PATIENT", pet.frame_of_reference_uid)


def _check_axes(volume: hd.Volume, grid: hd.VolumeGeometry, path: Path) -> None:
    """Each SEG axis along a PET axis, with its spacing: highdicom would subsample a finer SEG."""
    for axis, spacing in zip(volume.unit_vectors(), volume.spacing):
        cosines = [abs(axis @ other) for other in grid.unit_vectors()]
        if max(cosines) < 1 - AXIS_TOLERANCE:
            raise ValueError(f"{path}: SEG axes {np.round(volume.unit_vectors(), 4).tolist()} are rotated against "
                             f"the PET series' {np.round(grid.unit_vectors(), 4).tolist()}")
        expected = grid.spacing[int(np.argmax(cosines))]
        if abs(spacing - expected) > SPACING_TOLERANCE * expected:
            raise ValueError(f"{path}: SEG grid (spacing {np.round(volume.spacing, 4).tolist()} mm) is not the PET "
                             f"series' grid (spacing {np.round(grid.spacing, 4).tolist()} mm); SEG is not resampled")


def _mask_of(seg: hd.seg.Segmentation, numbers: list[int], pet: SeriesGrid, path: Path) -> np.ndarray:
    """The union of segments ``numbers`` of ``seg`` on the PET grid, (I, J, K) bool."""
    if str(seg.SegmentationType) == "FRACTIONAL":
        raise ValueError(f"{path}: SegmentationType FRACTIONAL is not supported (a binary lesion mask is needed)")
    grid = _pet_geometry(pet)
    try:
        extent = seg.get_volume_geometry(rtol=SPACING_TOLERANCE)
    except Exception as error:
        raise ValueError(f"{path}: its frames do not form a regular 3-D volume: {type(error).__name__}: {error}") from None
    # The frames' positions set the volume's extent: two frames a kilometre apart would make a huge one.
    if extent is not None and int(np.prod(extent.spatial_shape, dtype=np.int64)) > MAX_VOXELS:
        raise ValueError(f"{path}: its frames span {tuple(extent.spatial_shape)} voxels (limit {MAX_VOXELS})")
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=True, skip_overlap_checks=True,
                                dtype=np.uint8, rtol=SPACING_TOLERANCE)
    except Exception as error:
        raise ValueError(f"{path}: segments {numbers} do not form a regular 3-D volume: "
                         f"{type(error).__name__}: {error}") from None
    _check_axes(volume, grid, path)
    try:
        # Whole-voxel offsets within a SPACING_TOLERANCE fraction: a multi-bed series' slices jitter.
        matched = volume.match_geometry(grid, tol=SPACING_TOLERANCE)
    except RuntimeError as error:
        raise ValueError(f"{path}: SEG grid (spacing {np.round(volume.spacing, 4).tolist()} mm, origin "
                         f"{np.round(volume.position, 2).tolist()} LPS) does not lie on the PET series' grid "
                         f"{pet.series_dir} (spacing {np.round(grid.spacing, 4).tolist()} mm, origin "
                         f"{np.round(grid.position, 2).tolist()}): {error}") from None
    inside, total = int(np.count_nonzero(matched.array)), int(np.count_nonzero(volume.array))
    if inside != total:
        raise ValueError(f"{path}: {total - inside} of {total} segmented voxels lie outside the PET series "
                         f"{pet.series_dir} ({pet.shape} voxels)")
    return np.transpose(matched.array, (2, 1, 0)) > 0


def read_seg_mask(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    pet: PetVolume | SeriesGrid,
    segments: Sequence[str | int] | None = None,
) -> np.ndarray:
    """The union of the chosen segments of the SEG file(s) ``paths`` on ``pet``'s grid.

    ``pet`` is the series read by :func:`wspet.datasets.dicom.read_pet_series`, or its :class:`SeriesGrid`.

    Returns a uint8 (I, J, K) array, 1 inside a segment. Refused (ValueError naming the file): a
    file that is not a SEG, a frame of reference other than the series', a grid not on the
    series' grid or reaching outside it, a FRACTIONAL SEG, and a name of ``segments`` that no file
    has (the message lists each file's segments).
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    pet = pet if isinstance(pet, SeriesGrid) else SeriesGrid.of(pet)
    if not paths:
        raise ValueError(f"{pet.series_dir}: no SEG file given")
    mask = np.zeros(pet.shape, dtype=bool)
    found: set[str] = set()
    available = {}
    for path in paths:
        seg = read_seg(path)
        frame = str(seg.get("FrameOfReferenceUID", ""))
        if frame != pet.frame_of_reference_uid:
            raise ValueError(f"{path}: FrameOfReferenceUID {frame or '<none>'} is not the PET series' "
                             f"{pet.frame_of_reference_uid or '<none>'} ({pet.series_dir})")
        labels = segment_labels(seg)
        available[path] = labels
        numbers = choose_segments(seg, segments)
        found |= {str(s) for s in segments or () if choose_segments(seg, [s])}
        if numbers:
            mask |= _mask_of(seg, numbers, pet, path)
    missing = [s for s in segments or () if str(s) not in found]
    if missing:
        listing = "; ".join(f"{p}: {', '.join(f'{n} {label!r}' for n, label in labels.items())}"
                            for p, labels in available.items())
        raise ValueError(f"segment(s) {missing} not found; the SEG files have {listing}")
    return mask.astype(np.uint8)


# --------------------------------------------------------------------------- writing


def write_seg(
    mask: np.ndarray,
    series_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    label: str = "lesion",
    automatic: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``mask`` (I, J, K), on the grid of the series in ``series_dir``, as a binary DICOM SEG.

    One segment, ``label``, coded as a neoplasm; ``automatic`` says the mask came from wspet (else
    it was drawn by hand). The SEG references every instance of the series, shares its frame of
    reference, and stores only the frames with lesion voxels. Written to a temporary file beside
    ``out_path`` and moved into place; an existing ``out_path`` is refused unless ``overwrite``.
    """
    series_dir, out_path = Path(series_dir), Path(out_path)
    sources, _ = sort_and_affine(load_series_datasets(series_dir), series_dir)
    shape = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if mask.shape != shape:
        raise ValueError(f"{out_path}: mask shape {mask.shape} is not the series' {shape} ({series_dir})")
    if not overwrite and out_path.exists():
        raise FileExistsError(f"{out_path}: exists; pass overwrite=true to replace it")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="wspet", version=_wspet_version(), family=codes.cid7162.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic
        else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        algorithm_identification=algorithm if automatic else None,
    )
    with warnings.catch_warnings():
        # highdicom's advice on the source's PatientName ("STS_001" is one component) is no concern here.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        try:
            seg = _segmentation(sources, mask, description, label)
        except (AttributeError, ValueError, TypeError) as error:  # highdicom names neither the series nor the file
            raise ValueError(f"{series_dir}: cannot make a DICOM SEG on this series: {type(error).__name__}: {error}"
                             " (a required attribute missing from the slices?)") from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".dcm")
    os.close(handle)
    try:
        seg.save_as(staged)
        os.chmod(staged, new_folder_mode() & 0o666)  # mkstemp's file is private; give it open()'s mode
        return publish(staged, out_path, overwrite)
    finally:
        Path(staged).unlink(missing_ok=True)


def _segmentation(sources: list, mask: np.ndarray, description: hd.seg.SegmentDescription, label: str) -> hd.seg.Segmentation:
    """A binary SEG of ``mask`` (I, J, K) on the sorted slices ``sources``."""
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(np.transpose(mask > 0, (2, 1, 0))),  # (frames, rows, columns)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="wspet",
        manufacturer_model_name="wspet",
        software_versions=_wspet_version(),
        device_serial_number="none",
        series_description=f"wspet {label}"[:64],
    )
