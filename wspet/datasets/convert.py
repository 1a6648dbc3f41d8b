"""Convert a folder of per-patient PET NIfTI files into the wspet dataset format.

``SRC`` holds one PET image (SUV) and one lesion mask per case, in one of these layouts:

- ``sts``: ``<case>/PET_image.nii.gz`` + ``<case>/PET_mask.nii.gz`` (the layout of
  ``shared/data/sts-fdg-pet``);
- ``hecktor``: flat ``<case>_pt.nii.gz`` + ``<case>_gtvt.nii.gz``, at any depth (HECKTOR 2021);
- ``glob``: a pattern pair given with ``--image-glob`` / ``--label-glob`` (relative to SRC,
  ``**`` for any depth);
- ``dicom-seg``: ``<case>/`` folders of DICOM files at any depth (a TCIA download such as
  QIN-HEADNECK): one or more DICOM SEG files, and the PET series they reference (found by
  SeriesInstanceUID among the case's series folders), converted to SUV by
  :func:`wspet.datasets.dicom.read_pet_series`. The label is the union of the SEG segments chosen by
  ``--segments`` (labels or numbers; all by default), read by :func:`wspet.datasets.seg.read_seg_mask`.

Case names (:func:`case_key`): the part of the file name matched by the wildcards of the
pattern's last component (``*_pt.nii.gz`` names ``CHGJ007_pt.nii.gz`` ``CHGJ007``); when that
component has no wildcard (``*/PET_image.nii.gz``), the name of the file's folder. Images
and labels pair by name; an image without a label, a label without an image, or two files
with one name is an error.

Per case: the label is resampled to the image's grid if the grids differ (nearest
neighbour through both affines; grids rotated against each other or not overlapping are
refused), optionally cropped to the top ``--crop-superior-mm`` mm, and the case gets boxes
derived from the label (one per 26-connected lesion, scaled and grown by a margin in mm) or
read from a CSV/JSON of world-mm boxes. Cases are split into training and test lists by a
seeded permutation. The set is built in a hidden folder beside OUT (``dataset.json`` last),
read back with :mod:`wspet.data.format`, and only then renamed to OUT; ``--overwrite`` swaps an
earlier set out whole, so an interrupted run leaves the earlier set as it was. Symbolic links
inside OUT are refused (docs/security.md). See ``docs/real_data.md``.

CLI::

    python -m wspet.datasets.convert SRC OUT [--layout sts|hecktor|dicom-seg|glob|auto] [--segments ...] [--weak]
        [--test-fraction 0.25] [--seed 0] [--box-margin-mm MM | --box-scale S |
        --boxes-file BOXES.csv [--boxes-lps]] [--crop-superior-mm MM] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from wspet.data.boxes import Box, box_dice, boxes_from_label, clip_box
from wspet.datasets.dicom import read_pet_series
from wspet.data.format import (
    AFFINE_TOLERANCE_MM,
    MIN_BOX_FRACTION_INSIDE,
    case_boxes,
    load_image,
    load_label,
    open_nifti,
    parse_json,
    read_dataset,
    read_voxels,
)
from wspet.datasets.seg import SEG_SOP_CLASS_UID, read_seg_mask
from wspet.io import new_folder_mode, save_nifti, write_text
from wspet.metrics.summary import mean_std

LAYOUTS = {
    "sts": ("*/PET_image.nii.gz", "*/PET_mask.nii.gz"),
    "hecktor": ("**/*_pt.nii.gz", "**/*_gtvt.nii.gz"),
}
DICOM_SEG_LAYOUT = "dicom-seg"
SPLIT_FOLDERS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
# Largest angle between an axis of the label's grid and the nearest axis of the image's grid
# that is still read as "the same orientation" (scanner round-off, not a real rotation).
ROTATION_TOLERANCE_DEG = 0.5
# Rounding slack, in voxels, when mapping world-mm box corners to voxel indices.
ROUNDING_SLACK_VOX = 1e-3
BOX_COLUMNS = ("case", "x0", "y0", "z0", "x1", "y1", "z1")
_CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WILDCARD = re.compile(r"[*?\[\]]")
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SourceCase:
    """One case found in SRC: its name and its image and label files.

    A DICOM case's ``image`` is its PET series folder and ``segs`` its SEG files (``label`` the first).
    """

    name: str
    image: Path
    label: Path
    segs: tuple[Path, ...] = ()


@dataclass
class ConvertedCase:
    """A case ready to write: arrays on the image's grid (I, J, K) and its boxes."""

    name: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    boxes: list[Box]
    resampled: bool = False
    cropped_slices: int = 0


# --------------------------------------------------------------------------- finding cases


def case_key(path: Path, pattern: str) -> str:
    """The case name of ``path`` matched by ``pattern`` (see the module docstring)."""
    last = pattern.replace("\\", "/").rsplit("/", 1)[-1]
    if not _WILDCARD.search(last):
        return path.parent.name
    wildcards = list(_WILDCARD.finditer(last))
    prefix, suffix = last[: wildcards[0].start()], last[wildcards[-1].end():]
    return path.name[len(prefix): len(path.name) - len(suffix)]


def _match(src: Path, pattern: str) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for path in sorted(src.glob(pattern)):
        if path.is_file() and not path.name.startswith("."):
            found.setdefault(case_key(path, pattern), []).append(path)
    problems = [f"{name!r} names {len(paths)} files: {[str(p) for p in paths]}"
                for name, paths in found.items() if len(paths) > 1]
    problems += [f"{paths[0]}: case name {name!r} is not a plain file name ([A-Za-z0-9._-])"
                 for name, paths in found.items() if not _CASE_NAME.fullmatch(name)]
    if problems:
        raise ValueError(f"{src} pattern {pattern!r}: " + "; ".join(problems))
    return {name: paths[0] for name, paths in found.items()}


def detect_layout(src: str | Path) -> str:
    """The one layout of :data:`LAYOUTS` with files in ``src``; ValueError if none or several."""
    src = Path(src)
    matching = [name for name, (image, _) in LAYOUTS.items() if _match(src, image)]
    if len(matching) != 1:
        raise ValueError(
            f"{src}: cannot tell the layout: {matching or 'no'} layout(s) match "
            f"({', '.join(f'{k}: {v[0]}' for k, v in LAYOUTS.items())}); choose --layout or give --image-glob"
        )
    return matching[0]


def resolve_layout(
    src: str | Path, layout: str = "auto", image_glob: str | None = None, label_glob: str | None = None
) -> tuple[str, str, str]:
    """``(layout, image_glob, label_glob)`` for the arguments: a named layout's patterns, the
    detected layout's for ``auto``, or ``glob`` with the patterns given."""
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src}: source folder does not exist")
    if image_glob or label_glob or layout == "glob":
        if not (image_glob and label_glob):
            raise ValueError(f"--image-glob {image_glob!r} and --label-glob {label_glob!r}: give both")
        if layout not in ("auto", "glob"):
            raise ValueError(f"--layout {layout!r} and --image-glob: give one or the other")
        return "glob", image_glob, label_glob
    if layout == "auto":
        layout = detect_layout(src)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r} is not one of auto, glob, {', '.join(LAYOUTS)}")
    return (layout, *LAYOUTS[layout])


def find_cases(
    src: str | Path,
    layout: str = "auto",
    image_glob: str | None = None,
    label_glob: str | None = None,
) -> list[SourceCase]:
    """Cases of ``src`` sorted by name. ``layout`` is auto, sts, hecktor or glob (with both globs).

    Raises ValueError naming the files when images and labels do not pair up or no case is found.
    """
    src = Path(src)
    _, image_glob, label_glob = resolve_layout(src, layout, image_glob, label_glob)
    images, labels = _match(src, image_glob), _match(src, label_glob)
    overlap = set(images.values()) & set(labels.values())
    if overlap:
        raise ValueError(f"{src}: {sorted(map(str, overlap))[0]} matches both {image_glob!r} and {label_glob!r}")
    problems = [f"{images[n]}: no label (looked for {label_glob!r})" for n in sorted(set(images) - set(labels))]
    problems += [f"{labels[n]}: no image (looked for {image_glob!r})" for n in sorted(set(labels) - set(images))]
    if problems:
        raise ValueError(f"{src}: {len(problems)} unpaired file(s): " + "; ".join(problems))
    if not images:
        raise ValueError(f"{src}: no files match {image_glob!r}")
    return [SourceCase(name, images[name], labels[name]) for name in sorted(images)]


def _series_folders(case_dir: Path) -> tuple[list[Path], dict[str, Path]]:
    """The SEG files under ``case_dir`` and its image series folders by SeriesInstanceUID.

    A folder's first readable DICOM file stands for its series (TCIA downloads keep one series per
    folder); every file of a folder whose first file is a SEG is read as a SEG.
    """
    segs, series = [], {}
    for folder in sorted({p.parent for p in case_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        for path in files:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True,
                                         specific_tags=["SOPClassUID", "SeriesInstanceUID", "Modality"])
            except (InvalidDicomError, OSError):
                continue
            if str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID:
                segs += files
            else:
                series.setdefault(str(header.get("SeriesInstanceUID", "")), folder)
            break
    return segs, series


def _referenced_series(seg_path: Path) -> str:
    header = pydicom.dcmread(seg_path, stop_before_pixels=True)
    referenced = header.get("ReferencedSeriesSequence") or []
    if not referenced:
        raise ValueError(f"{seg_path}: DICOM SEG without ReferencedSeriesSequence (0008,1115): cannot tell its PET series")
    return str(referenced[0].get("SeriesInstanceUID", ""))


def find_dicom_cases(src: str | Path) -> list[SourceCase]:
    """The ``dicom-seg`` cases of ``src`` (one per sub-folder holding a SEG), sorted by name.

    Each case's SEG files must reference one series, and that series must be in the case's folder;
    ValueError naming the files otherwise, or when no folder holds a SEG.
    """
    src = Path(src)
    cases, problems = [], []
    for case_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        segs, series = _series_folders(case_dir)
        if not segs:
            problems.append(f"{case_dir}: no DICOM SEG file")
            continue
        wanted = {_referenced_series(path): path for path in segs}
        if len(wanted) > 1:
            problems.append(f"{case_dir}: its SEG files reference {len(wanted)} series: "
                            + ", ".join(f"{uid} ({path.name})" for uid, path in wanted.items()))
        elif next(iter(wanted)) not in series:
            problems.append(f"{segs[0]}: references series {next(iter(wanted))}, which is not in {case_dir}")
        elif not _CASE_NAME.fullmatch(case_dir.name):
            problems.append(f"{case_dir}: case name {case_dir.name!r} is not a plain file name ([A-Za-z0-9._-])")
        else:
            cases.append(SourceCase(case_dir.name, series[next(iter(wanted))], segs[0], tuple(segs)))
    if problems:
        raise ValueError(f"{src} (layout {DICOM_SEG_LAYOUT}): " + "; ".join(problems))
    if not cases:
        raise ValueError(f"{src}: no case folders (layout {DICOM_SEG_LAYOUT}: <case>/ with a PET series and DICOM SEG)")
    return cases


# --------------------------------------------------------------------------- grids


def _unit_axes(affine: np.ndarray) -> np.ndarray:
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def rotation_between(affine_a: np.ndarray, affine_b: np.ndarray) -> float:
    """Largest angle (degrees) between an axis of grid b and the nearest (signed) axis of grid a.

    0 for grids whose axes are parallel, even when permuted or flipped.
    """
    cosines = np.abs(_unit_axes(affine_b).T @ _unit_axes(affine_a)).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(cosines, 0.0, 1.0))).max())


def world_extent(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``(2, 3)`` world-axis bounds (mm) of a grid's voxels, outer voxel edges included."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape], indexing="ij")).reshape(3, -1)
    world = np.asarray(affine)[:3, :3] @ corners + np.asarray(affine)[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def check_frames(
    image_affine: np.ndarray,
    image_shape: Sequence[int],
    label_affine: np.ndarray,
    label_shape: Sequence[int],
    image_name: str | Path = "image",
    label_name: str | Path = "label",
    max_rotation_deg: float = ROTATION_TOLERANCE_DEG,
) -> None:
    """Refuse a label grid rotated against the image's or lying outside it (ValueError)."""
    for name, affine in ((image_name, image_affine), (label_name, label_affine)):
        affine = np.asarray(affine)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise ValueError(f"{name}: affine {np.asarray(affine).tolist()} is not an invertible finite 4x4 matrix")
    angle = rotation_between(image_affine, label_affine)
    if angle > max_rotation_deg:
        raise ValueError(
            f"{label_name}: label grid is rotated by {angle:.2f} degrees against the grid of {image_name}"
            f" (tolerance {max_rotation_deg} degrees); label axes {np.round(_unit_axes(label_affine), 4).T.tolist()}"
            f" vs image axes {np.round(_unit_axes(image_affine), 4).T.tolist()}: not the same frame of reference"
        )
    image_box, label_box = world_extent(image_affine, image_shape), world_extent(label_affine, label_shape)
    if np.any(np.minimum(image_box[1], label_box[1]) <= np.maximum(image_box[0], label_box[0])):
        raise ValueError(
            f"{label_name}: label extent {np.round(label_box, 2).tolist()} mm does not overlap the extent"
            f" {np.round(image_box, 2).tolist()} mm of {image_name}: not the same frame of reference"
        )


def resample_label(
    label: np.ndarray, label_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """``label != 0`` (I', J', K') resampled onto the grid ``(shape, affine)`` as uint8 {0, 1}.

    Nearest neighbour: each target voxel takes the label voxel nearest its centre (scipy's
    ``affine_transform`` with order 0); voxels off the label's grid are 0.
    """
    to_label = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    # scipy's "constant" mode zeroes any point beyond the outer voxel centres, even one that is
    # still within half a voxel of them; a zero border read with "nearest" keeps those points
    # and zeroes only points truly off the grid.
    padded = np.pad((np.asarray(label) != 0).astype(np.uint8), 1)
    return ndimage.affine_transform(
        padded, to_label[:3, :3], offset=to_label[:3, 3] + 1.0,
        output_shape=tuple(int(n) for n in shape), order=0, mode="nearest",
    )


def _lost_fraction(label: np.ndarray, label_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray) -> float:
    """Share of the label's lesion voxels whose centres fall outside the image grid."""
    points = np.argwhere(label != 0).astype(np.float64)
    if not len(points):
        return 0.0
    to_image = np.linalg.inv(affine) @ label_affine
    voxels = points @ to_image[:3, :3].T + to_image[:3, 3]
    inside = np.all((voxels >= -0.5) & (voxels < np.array(shape) - 0.5), axis=1)
    return 1.0 - float(inside.mean())


def label_on_image_grid(
    label: np.ndarray,
    label_affine: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
    image_name: str | Path = "image",
    label_name: str | Path = "label",
) -> tuple[np.ndarray, bool]:
    """The label on the image's grid as uint8 {0, 1}, and whether it had to be resampled.

    Raises ValueError (naming both files) for rotated or disjoint grids, and when none of the
    label's lesion voxels falls inside the image; warns when some do not.
    """
    label = np.asarray(label)
    if label.ndim == 4 and label.shape[3] == 1:
        label = label[..., 0]
    if label.ndim != 3:
        raise ValueError(f"{label_name}: label shape {label.shape} is not 3D")
    if label.shape == tuple(shape) and np.allclose(label_affine, affine, atol=AFFINE_TOLERANCE_MM):
        return (label != 0).astype(np.uint8), False
    check_frames(affine, shape, label_affine, label.shape, image_name, label_name)
    lost = _lost_fraction(label, label_affine, shape, affine)
    if lost >= 1.0:
        raise ValueError(f"{label_name}: none of its {int(np.count_nonzero(label))} lesion voxels lies inside {image_name}")
    if lost > 0:
        warnings.warn(f"{label_name}: {lost:.1%} of the lesion voxels lie outside {image_name} and are dropped", stacklevel=2)
    return resample_label(label, label_affine, shape, affine), True


# --------------------------------------------------------------------------- cropping


def superior_axis(affine: np.ndarray) -> tuple[int, bool]:
    """The voxel axis closest to the superior direction, and whether its indices run upwards."""
    axis = int(np.argmax(np.abs(np.asarray(affine)[2, :3])))
    return axis, bool(affine[2, axis] > 0)


def crop_superior(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, keep_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Keep the top ``round(keep_mm / slice spacing)`` slices (at least 1) along the superior axis.

    Returns the cropped image and label, the affine of the cropped grid (same world
    positions) and the number of slices dropped (0 when the volume is not taller).
    """
    if not (isinstance(keep_mm, (int, float)) and math.isfinite(keep_mm) and keep_mm > 0):
        raise ValueError(f"--crop-superior-mm {keep_mm!r} is not a positive number of mm")
    axis, upwards = superior_axis(affine)
    spacing = float(np.linalg.norm(affine[:3, axis]))
    size = image.shape[axis]
    keep = min(size, max(1, math.floor(keep_mm / spacing + 0.5)))
    start = size - keep if upwards else 0
    window = [slice(None)] * 3
    window[axis] = slice(start, start + keep)
    shift = np.zeros(3)
    shift[axis] = start
    cropped = np.array(affine, dtype=np.float64)
    cropped[:3, 3] = affine[:3, :3] @ shift + affine[:3, 3]
    return image[tuple(window)], label[tuple(window)], cropped, size - keep


# --------------------------------------------------------------------------- boxes


def _numbers(values: Sequence[object], where: str) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {list(values)} are not 6 numbers x0, y0, z0, x1, y1, z1 (mm)") from None
    if numbers.shape != (6,) or not np.all(np.isfinite(numbers)):
        raise ValueError(f"{where}: {list(values)} are not 6 finite numbers x0, y0, z0, x1, y1, z1 (mm)")
    return numbers


def read_world_boxes(path: str | Path, lps: bool = False) -> dict[str, list[np.ndarray]]:
    """Boxes in world mm per case from a CSV or JSON file, as RAS ``[x0, y0, z0, x1, y1, z1]``.

    CSV: a header with ``case,x0,y0,z0,x1,y1,z1`` (other columns ignored), one box a row.
    JSON: ``{"case": [[x0, y0, z0, x1, y1, z1], ...]}`` or a list of objects with the CSV's
    keys. The two corners are opposite corners in any order. Coordinates are RAS mm
    (nibabel's world) unless ``lps`` (DICOM's patient frame: x and y are negated here).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the boxes file ({error})") from None
    rows: list[tuple[str, list[object], str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = parse_json(text)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if isinstance(data, dict):
            for case, boxes in data.items():
                if not isinstance(boxes, list) or (boxes and not isinstance(boxes[0], list)):
                    raise ValueError(f"{path} case {case!r}: {boxes!r} is not a list of [x0, y0, z0, x1, y1, z1]")
                rows += [(str(case), box, f"{path} case {case!r} box {n}") for n, box in enumerate(boxes)]
        elif isinstance(data, list) and all(isinstance(d, dict) for d in data):
            rows += [(str(d.get("case")), [d.get(k) for k in BOX_COLUMNS[1:]], f"{path} item {n}")
                     for n, d in enumerate(data)]
        else:
            raise ValueError(f"{path}: JSON must map case -> boxes or list objects with keys {BOX_COLUMNS}")
    else:
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: CSV header {reader.fieldnames} lacks columns {missing}")
        rows += [(str(row["case"] or ""), [row[k] for k in BOX_COLUMNS[1:]], f"{path} line {n + 2}")
                 for n, row in enumerate(reader)]
    boxes: dict[str, list[np.ndarray]] = {}
    for case, values, where in rows:
        numbers = _numbers(values, where)
        if lps:
            numbers = numbers * np.tile(_LPS_TO_RAS, 2)
        boxes.setdefault(case.strip(), []).append(numbers)
    return boxes


def world_box_to_voxels(box_mm: Sequence[float], affine: np.ndarray, shape: Sequence[int], where: str = "box") -> Box:
    """A world-axis-aligned RAS box (mm) as the voxel box covering it, clipped to ``shape``.

    The box takes every voxel any part of which lies inside it (edges rounded outward, a
    voxel spanning its index +- 0.5), at least one voxel per axis. A box partly outside the
    volume is clipped with a warning if at least half of it is inside; otherwise ValueError.
    """
    box_mm = np.asarray(box_mm, dtype=np.float64)
    corners = np.array(np.meshgrid(*[[box_mm[a], box_mm[a + 3]] for a in range(3)], indexing="ij")).reshape(3, -1)
    inverse = np.linalg.inv(affine)
    voxels = inverse[:3, :3] @ corners + inverse[:3, 3:4]
    low, high = voxels.min(axis=1), voxels.max(axis=1)
    start = np.floor(low + 0.5 + ROUNDING_SLACK_VOX).astype(int)
    stop = np.maximum(np.ceil(high - 0.5 - ROUNDING_SLACK_VOX).astype(int) + 1, start + 1)
    box = [int(v) for v in (*start, *stop)]
    clipped, fraction = clip_box(box, shape)
    if fraction < MIN_BOX_FRACTION_INSIDE:
        raise ValueError(f"{where} {box_mm.tolist()} mm -> voxels {box}: only {fraction:.0%} inside the volume {tuple(shape)}")
    if fraction < 1.0:
        warnings.warn(f"{where} {box_mm.tolist()} mm -> voxels {box}: clipped to the volume {tuple(shape)} as {clipped}", stacklevel=2)
    return clipped


def label_boxes(label: np.ndarray, affine: np.ndarray, margin_mm: float = 0.0, scale: float = 1.0) -> list[Box]:
    """One box per 26-connected lesion: the tight box scaled by ``scale`` about its centre, then
    grown by ``ceil(margin_mm / spacing)`` voxels a side per axis, clipped (boxes.grow_box)."""
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"--box-margin-mm {margin_mm!r} is not a number >= 0")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"--box-scale {scale!r} is not a number > 0")
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    margin = [math.ceil(margin_mm / s - 1e-9) for s in spacing]
    return boxes_from_label(label, margin_vox=margin, scale=scale)


# --------------------------------------------------------------------------- split


def split_cases(names: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split: ``round(test_fraction * n)`` test cases (at least 1 when the fraction is
    > 0, at most n - 1 when it is < 1, for n >= 2), drawn by ``default_rng(seed).permutation``
    of the sorted names. Returns (training, test), each sorted."""
    if not (isinstance(test_fraction, (int, float)) and 0.0 <= test_fraction <= 1.0):
        raise ValueError(f"--test-fraction {test_fraction!r} is not in [0, 1]")
    names = sorted(names)
    n = len(names)
    n_test = int(math.floor(test_fraction * n + 0.5))
    if n >= 2:
        n_test = max(n_test, 1) if test_fraction > 0 else n_test
        n_test = min(n_test, n - 1) if test_fraction < 1 else n_test
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(names[i] for i in order[:n_test])
    return [name for name in names if name not in test], test


# --------------------------------------------------------------------------- conversion


def convert_case(
    case: SourceCase,
    crop_superior_mm: float | None = None,
    box_margin_mm: float = 0.0,
    box_scale: float = 1.0,
    world_boxes: list[np.ndarray] | None = None,
    segments: Sequence[str] | None = None,
) -> ConvertedCase:
    """Load one case, put its label on the image's grid, crop, and give it boxes.

    ``world_boxes`` (RAS mm) replace the label-derived boxes when given. A DICOM case's label is the
    union of the ``segments`` (all when None) of its SEG files, on its series' grid.
    """
    if case.segs:
        pet = read_pet_series(case.image)
        array, affine, resampled = pet.suv, pet.affine, False
        label_array = label = read_seg_mask(case.segs, pet, segments)
    else:
        image = load_image(case.image)
        raw = open_nifti(case.label, "label")  # its declared size is checked before anything is decompressed
        label_array, label_affine = read_voxels(raw, case.label), np.asarray(raw.affine, dtype=np.float64)
        label, resampled = label_on_image_grid(label_array, label_affine, image.array.shape, image.affine,
                                               case.image, case.label)
        array, affine = image.array, image.affine
    dropped = 0
    if crop_superior_mm is not None:
        array, label, affine, dropped = crop_superior(array, label, affine, crop_superior_mm)
        if label.sum() == 0 and np.any(label_array):
            warnings.warn(f"{case.name}: cropping to the top {crop_superior_mm} mm removed every lesion", stacklevel=2)
    if world_boxes is None:
        boxes = label_boxes(label, affine, box_margin_mm, box_scale)
    else:
        boxes = [world_box_to_voxels(b, affine, array.shape, f"{case.name} box {n}") for n, b in enumerate(world_boxes)]
    return ConvertedCase(case.name, np.asarray(array, dtype=np.float32), label.astype(np.uint8), affine, boxes,
                         resampled=resampled, cropped_slices=dropped)


def check_headers(cases: Sequence[SourceCase]) -> None:
    """Check every case's frames from the NIfTI headers alone, before anything is written.

    DICOM cases are checked as they are read (:func:`wspet.datasets.seg.read_seg_mask`).
    """
    for case in (c for c in cases if not c.segs):
        image, label = open_nifti(case.image, "image"), open_nifti(case.label, "label")  # sizes checked too
        if label.shape[:3] != image.shape[:3] or not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
            check_frames(image.affine, image.shape[:3], label.affine, label.shape[:3], case.image, case.label)


def _prepare_out(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse an OUT that overlaps SRC or holds files; with ``overwrite``, accept an earlier
    conversion (dataset.json and the image/label folders of .nii.gz files), which is replaced whole.

    Symbolic links are refused (OUT itself, its entries, the files of its split folders): replacing
    the set must never delete through a link, e.g. into SRC or another dataset.
    """
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r.is_relative_to(src_r) or src_r.is_relative_to(out_r):
        raise ValueError(f"{out}: output folder overlaps the source folder {src}; inputs are never modified")
    if out.is_symlink():
        raise ValueError(f"{out}: is a symbolic link to {out_r}; give the folder itself ({out_r})")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    entries = sorted(out.iterdir()) if out.exists() else []
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"{out}: not empty ({len(entries)} entries, e.g. {entries[0].name}); pass --overwrite to replace it")
    folders = {f for pair in SPLIT_FOLDERS.values() for f in pair}
    for entry in entries:
        _refuse_link(entry, src_r)
        inside = sorted(entry.iterdir()) if entry.name in folders and entry.is_dir() else []
        for path in inside:
            _refuse_link(path, src_r)
        ours = (entry.name.startswith(".") and entry.is_file()) or (entry.name == "dataset.json" and entry.is_file()) or (
            entry.name in folders and entry.is_dir()
            and all(f.is_file() and (f.name.endswith(".nii.gz") or f.name.startswith(".")) for f in inside))
        if not ours:
            raise ValueError(f"{out}: holds {entry}, which a conversion does not write; refusing to overwrite it")


def _refuse_link(path: Path, src_resolved: Path) -> None:
    if path.is_symlink():
        target = path.resolve()
        into_src = " (inside the source folder)" if target.is_relative_to(src_resolved) else ""
        raise ValueError(f"{path}: is a symbolic link to {target}{into_src}; --overwrite never deletes through links")


def _staging_folder(out: Path) -> Path:
    """An empty hidden folder beside ``out``: the new set is built there, then swapped in whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))


def _swap_into_place(new: Path, out: Path) -> None:
    """Move the finished set ``new`` to ``out``; an earlier set there is deleted only after the swap.

    Two renames on one file system: an interrupt leaves either the old set at ``out`` or the new one.
    """
    os.chmod(new, new_folder_mode())  # mkdtemp's folder is private
    if not (out.is_dir() and any(out.iterdir())):
        os.rename(new, out)  # onto an empty folder or none
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def _dataset_json(data: dict) -> str:
    text = json.dumps(data, indent=1)
    # One line per box keeps the file readable.
    return re.sub(r"\[[\d\s,.eE+-]*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text) + "\n"


def read_back(out: str | Path, expected: dict[str, list[str]], weak: bool) -> None:
    """Read a written dataset back with the project's reader and check every case loads."""
    index = read_dataset(out)
    for split, names in expected.items():
        cases = index.split(split)
        if [c.name for c in cases] != names:
            raise ValueError(f"{out}: {split} reads back as {[c.name for c in cases]}, expected {names}")
        for case in cases:
            image = load_image(case.image)
            needs_label = split == "test" or not weak
            if needs_label != (case.label is not None):
                raise ValueError(f"{out}: {case.name} label is {case.label} (weak={weak}, split={split})")
            if case.label is not None:
                load_label(case.label, image)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a written box must lie inside its volume
                case_boxes(case, image)


def _write_case(case: ConvertedCase, out: Path, split: str, keep_label: bool) -> dict:
    """Write a case's image (and label) atomically; return its dataset.json entry."""
    image_dir, label_dir = SPLIT_FOLDERS[split]
    entry: dict = {"image": f"{image_dir}/{case.name}.nii.gz"}
    save_nifti(case.image, case.affine, out / entry["image"])
    if keep_label:
        entry["label"] = f"{label_dir}/{case.name}.nii.gz"
        save_nifti(case.label, case.affine, out / entry["label"])
    entry["boxes"] = case.boxes
    return entry


def _convert_into(found: Sequence[SourceCase], test: Sequence[str], folder: Path, weak: bool,
                  crop_superior_mm: float | None, box_margin_mm: float, box_scale: float,
                  world: dict | None, src: Path, log, segments: Sequence[str] | None = None,
                  ) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Convert and write every case into ``folder``; return the dataset.json entries and provenance."""
    entries: dict[str, list[dict]] = {"training": [], "test": []}
    provenance: dict[str, dict] = {}
    for number, case in enumerate(found, start=1):
        split = "test" if case.name in test else "training"
        converted = convert_case(case, crop_superior_mm, box_margin_mm, box_scale,
                                 None if world is None else world[case.name], segments)
        entries[split].append(_write_case(converted, folder, split, keep_label=split == "test" or not weak))
        provenance[case.name] = {
            "image": str(case.image.relative_to(src)), "label": str(case.label.relative_to(src)),
            "resampled_label": converted.resampled, "cropped_slices": converted.cropped_slices,
            "box_dice": box_dice(converted.boxes, converted.label),
        }
        if case.segs:
            provenance[case.name]["segs"] = [str(p.relative_to(src)) for p in case.segs]
        log(f"[{number}/{len(found)}] {case.name}: {split:8s} {'x'.join(map(str, converted.image.shape))}"
            f"{' (label resampled)' if converted.resampled else ''}"
            f"{f' ({converted.cropped_slices} slices cropped)' if converted.cropped_slices else ''}"
            f"  {len(converted.boxes)} box(es), box/label Dice {provenance[case.name]['box_dice']:.3f}")
    return entries, provenance


def _dataset_index(src: Path, name: str | None, entries: dict[str, list[dict]], conversion: dict) -> dict:
    licences = sorted(p.name for p in src.glob("LICEN[CS]E*"))
    return {
        "name": name or f"wspet-{src.resolve().name}",
        "description": f"PET (SUV) converted from {src.resolve().name} by wspet.datasets.convert; see docs/real_data.md",
        "licence": f"see {licences[0]} of the source data" if licences else "see the licence of the source data",
        "modality": {"0": "PET"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(entries["training"]),
        "numTest": len(entries["test"]),
        "conversion": conversion,
        "training": entries["training"],
        "test": entries["test"],
    }


def _check_options(box_margin_mm: float, box_scale: float, boxes_file: object, crop_superior_mm: float | None,
                   limit: int | None) -> None:
    """Refuse bad option values before anything is read or written."""
    if boxes_file is not None and (box_margin_mm != 0.0 or box_scale != 1.0):
        raise ValueError(f"--boxes-file {boxes_file} with --box-margin-mm {box_margin_mm} / --box-scale {box_scale}:"
                         " margins and scales apply to label-derived boxes only")
    if not (math.isfinite(box_margin_mm) and box_margin_mm >= 0):
        raise ValueError(f"--box-margin-mm {box_margin_mm!r} is not a number >= 0")
    if not (math.isfinite(box_scale) and box_scale > 0):
        raise ValueError(f"--box-scale {box_scale!r} is not a number > 0")
    if crop_superior_mm is not None and not (math.isfinite(crop_superior_mm) and crop_superior_mm > 0):
        raise ValueError(f"--crop-superior-mm {crop_superior_mm!r} is not a positive number of mm")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit {limit!r} is not a positive int")


def _select(found: list[SourceCase], cases: Sequence[str] | None, limit: int | None, src: Path) -> list[SourceCase]:
    """The cases named in ``cases`` (all when None), then the first ``limit`` of them."""
    if cases:
        unknown = sorted(set(cases) - {c.name for c in found})
        if unknown:
            raise ValueError(f"--cases {unknown}: not in {src} (found {[c.name for c in found][:5]}...)")
        found = [c for c in found if c.name in set(cases)]
    return found[:limit] if limit else found


def convert_dataset(
    src: str | Path,
    out: str | Path,
    layout: str = "auto",
    image_glob: str | None = None,
    label_glob: str | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    weak: bool = False,
    box_margin_mm: float = 0.0,
    box_scale: float = 1.0,
    boxes_file: str | Path | None = None,
    boxes_lps: bool = False,
    crop_superior_mm: float | None = None,
    limit: int | None = None,
    cases: Sequence[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    segments: Sequence[str] | None = None,
    log=print,
) -> dict:
    """Convert ``src`` into a wspet dataset in ``out`` (see the module docstring).

    Returns a summary: ``training`` / ``test`` case names, ``box_dice`` per case (boxes vs
    label on the written grid), ``box_dice_mean`` / ``box_dice_std``, ``resampled`` and
    ``cropped`` case names. ``log`` receives one line per case and the summary. Raises
    ValueError (before writing anything where the problem is in the arguments or the source
    layout) naming the file or argument at fault.
    """
    src, out = Path(src), Path(out)
    _check_options(box_margin_mm, box_scale, boxes_file, crop_superior_mm, limit)
    if segments and layout != DICOM_SEG_LAYOUT:
        raise ValueError(f"--segments {list(segments)}: only with --layout {DICOM_SEG_LAYOUT}")
    if layout == DICOM_SEG_LAYOUT:
        if not src.is_dir():
            raise ValueError(f"{src}: source folder does not exist")
        image_glob = label_glob = None
        every = find_dicom_cases(src)
    else:
        layout, image_glob, label_glob = resolve_layout(src, layout, image_glob, label_glob)
        every = find_cases(src, "glob", image_glob, label_glob)
    found = _select(every, cases, limit, src)
    world = read_world_boxes(boxes_file, boxes_lps) if boxes_file is not None else None
    if world is not None:
        unknown = sorted(set(world) - {c.name for c in every})
        missing = sorted({c.name for c in found} - set(world))
        if unknown or missing:
            raise ValueError(f"{boxes_file}: cases {unknown} are not in {src}; cases {missing} have no boxes")
    training, test = split_cases([c.name for c in found], test_fraction, seed)
    check_headers(found)
    _prepare_out(src, out, overwrite)
    staging = _staging_folder(out)
    try:
        entries, provenance = _convert_into(found, test, staging, weak, crop_superior_mm, box_margin_mm, box_scale,
                                            world, src, log, segments)
        dice = {name: p["box_dice"] for name, p in provenance.items()}
        mean, std = mean_std(list(dice.values()), ddof=0)
        box_rule = ({"source": "file", "file": str(boxes_file), "frame": "LPS" if boxes_lps else "RAS"}
                    if world is not None
                    else {"source": "label", "margin_mm": box_margin_mm, "scale": box_scale, "connectivity": 26})
        conversion = {
            "source": str(src), "layout": layout, "image_glob": image_glob, "label_glob": label_glob,
            "segments": list(segments) if segments else None,
            "seed": seed, "test_fraction": test_fraction, "weak": weak, "boxes": box_rule,
            "crop_superior_mm": crop_superior_mm, "box_dice_mean": mean, "box_dice_std": std,
            "cases": provenance,
        }
        write_text(staging / "dataset.json", _dataset_json(_dataset_index(src, name, entries, conversion)))
        read_back(staging, {"training": training, "test": test}, weak)
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful swap
    resampled = [n for n, p in provenance.items() if p["resampled_label"]]
    cropped = [n for n, p in provenance.items() if p["cropped_slices"]]
    log(f"{out}: {len(training)} training + {len(test)} test cases; box/label Dice {mean:.3f} +- {std:.3f}"
        f" ({len(dice)} cases); {len(resampled)} label(s) resampled, {len(cropped)} case(s) cropped")
    return {"out": str(out), "training": training, "test": test, "box_dice": dice, "box_dice_mean": mean,
            "box_dice_std": std, "resampled": resampled, "cropped": cropped}


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wspet.datasets.convert",
        description="Convert per-patient PET (NIfTI files, or DICOM series with DICOM SEG) into the wspet dataset format (docs/real_data.md).",
    )
    parser.add_argument("src", type=Path, help="source folder (never modified)")
    parser.add_argument("out", type=Path, help="output dataset folder (must be empty unless --overwrite)")
    parser.add_argument("--layout", default="auto", choices=["auto", "glob", *LAYOUTS, DICOM_SEG_LAYOUT],
                        help=f"{DICOM_SEG_LAYOUT}: <case>/ folders of DICOM, a PET series and its DICOM SEG file(s)")
    parser.add_argument("--segments", nargs="+",
                        help=f"{DICOM_SEG_LAYOUT}: SEG segment labels or numbers making the label (default: all)")
    parser.add_argument("--image-glob", help="image pattern relative to SRC, e.g. '*/PET_image.nii.gz'")
    parser.add_argument("--label-glob", help="label pattern relative to SRC, e.g. '*/PET_mask.nii.gz'")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of cases in the test list (0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (0)")
    parser.add_argument("--weak", action="store_true", help="training entries keep boxes only (no label file)")
    boxes = parser.add_argument_group("boxes (default: the tight box of each lesion)")
    boxes.add_argument("--box-margin-mm", type=float, default=0.0, help="grow label boxes by this many mm a side")
    boxes.add_argument("--box-scale", type=float, default=1.0, help="scale label boxes about their centre")
    boxes.add_argument("--boxes-file", type=Path, help="CSV/JSON of world boxes: case,x0,y0,z0,x1,y1,z1 in RAS mm")
    boxes.add_argument("--boxes-lps", action="store_true", help="--boxes-file coordinates are DICOM LPS mm")
    parser.add_argument("--crop-superior-mm", type=float, help="keep only the top N mm along the superior axis")
    parser.add_argument("--limit", type=int, help="convert only the first N cases (sorted by name)")
    parser.add_argument("--cases", nargs="+", help="convert only these cases")
    parser.add_argument("--name", help="dataset name in dataset.json (default wspet-<SRC folder>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier conversion in OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert_dataset(
            args.src, args.out, layout=args.layout, image_glob=args.image_glob, label_glob=args.label_glob,
            test_fraction=args.test_fraction, seed=args.seed, weak=args.weak, box_margin_mm=args.box_margin_mm,
            box_scale=args.box_scale, boxes_file=args.boxes_file, boxes_lps=args.boxes_lps,
            crop_superior_mm=args.crop_superior_mm, limit=args.limit, cases=args.cases, name=args.name,
            overwrite=args.overwrite, segments=args.segments,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
