"""The wspet dataset format (Medical Segmentation Decathlon style): read it and check it on entry.

See docs/dataset_format.md. This module is the one place where bad input is caught:

- :func:`read_dataset` checks the index (``dataset.json``: paths, names, boxes) and reports every
  problem of the index at once (:func:`scan_dataset` returns them instead of raising);
- :func:`load_image` / :func:`load_label` check each volume as it is read (header, size, shape,
  voxel type, NaN/inf, negative SUV, empty image, grid, label values);
- :func:`case_boxes` checks a case's boxes against its volume and label.

Each raises :class:`DatasetError` (a ``ValueError``) naming the file or case and the bad value,
and warns with :class:`DatasetWarning` for input it accepts but changes (squeezed frames,
clipped boxes) or finds doubtful. ``wspet.data.check.validate_dataset`` runs all of them over a
dataset and adds the checks across cases (spacing, orientation).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from wspet.data.boxes import boxes_from_label, boxes_to_mask, clip_box
from wspet.io import NIFTI_SUFFIXES

SPLITS = ("training", "test")
ENTRY_KEYS = ("image", "label", "boxes", "lesion_free")
# A box sticking out of the volume is clipped (with a warning) only while most of it is inside.
MIN_BOX_FRACTION_INSIDE = 0.5
# Given boxes must hold at least this share of the label's lesion voxels: less means the boxes
# are on another grid or in another axis order than the label.
MIN_LABEL_COVERAGE = 0.5
AFFINE_TOLERANCE_MM = 1e-3
# Reconstruction noise may dip below 0; a minimum below -max(1 SUV, 5% of the maximum) is not
# noise but an offset, a wrong unit or a corrupt file.
NEGATIVE_SUV_FLOOR = 1.0
NEGATIVE_FRACTION_OF_MAX = 0.05
# Above this the image is almost certainly not in SUV (Bq/ml or counts): accepted, with a warning.
MAX_PLAUSIBLE_SUV = 500.0
# A header may promise at most this many voxels (1 GiB as float32; a whole-body PET at 2 mm has
# ~1.2e8): a corrupt or hostile header must not make the reader allocate what the machine lacks.
# Resampling to a target spacing is bounded by it too (wspet.data.preprocessing).
MAX_VOXELS = 2**28
# Deflate cannot compress more than 1032:1, so a .gz file of n bytes holds at most ~1032 n.
MAX_GZIP_RATIO = 1040
_SHOWN = 80  # characters of a bad value shown in a message


class DatasetError(ValueError):
    """A dataset that cannot be used; ``problems`` lists every problem found.

    The message is ``"<where>: <problem>"``, or ``"<where>: N problems"`` and one line each;
    ``where=None`` when every problem already starts with the file it concerns.
    """

    def __init__(self, where: str | Path | None, problems: Sequence[str]) -> None:
        self.where = None if where is None else str(where)
        self.problems = list(problems)
        prefix = "" if self.where is None else f"{self.where}: "
        if len(self.problems) == 1:
            super().__init__(f"{prefix}{self.problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{prefix}{len(self.problems)} problems\n{lines}")


class DatasetWarning(UserWarning):
    """Input accepted but changed (a frame squeezed, a box clipped) or doubtful (a raw integer image)."""


@dataclass(frozen=True)
class CaseEntry:
    """One case of ``dataset.json``: paths are absolute, ``boxes`` is None when not given.

    ``lesion_free`` marks a training case known to hold no lesion; any other training case
    must have at least one box or lesion voxel.
    """

    name: str
    split: str
    image: Path
    label: Path | None
    boxes: tuple[tuple[int, ...], ...] | None
    lesion_free: bool = False


@dataclass(frozen=True)
class DatasetIndex:
    """The parsed ``dataset.json`` of a dataset folder."""

    root: Path
    training: tuple[CaseEntry, ...]
    test: tuple[CaseEntry, ...]

    def split(self, name: str) -> tuple[CaseEntry, ...]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return getattr(self, name)


@dataclass(frozen=True)
class Volume:
    """A 3D array ``(I, J, K)`` as nibabel loads it, with its affine (voxel to RAS mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def case_name(image_path: str | Path) -> str:
    """``imagesTr/hn_001.nii.gz`` -> ``hn_001``."""
    name = Path(image_path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _warn(message: str) -> None:
    warnings.warn(message, DatasetWarning, stacklevel=3)


# --------------------------------------------------------------------------- the index


def read_dataset(root: str | Path) -> DatasetIndex:
    """Parse and check ``root/dataset.json``; raise :class:`DatasetError` listing every problem."""
    scan = scan_dataset(root)
    if scan.problems:
        raise DatasetError(scan.index.root / "dataset.json", scan.problems)
    return scan.index


@dataclass(frozen=True)
class IndexScan:
    """What :func:`scan_dataset` found: the cases, every problem of the index, and the cases
    with a problem (kept when their image path is usable, so their volumes can still be checked)."""

    index: DatasetIndex
    problems: list[str]
    flawed: frozenset[str]


def scan_dataset(root: str | Path) -> IndexScan:
    """Parse ``root/dataset.json`` and collect every problem of the index instead of raising.

    Raises :class:`DatasetError` only when nothing can be read: no ``dataset.json``, not JSON,
    or no ``"training"`` list.
    """
    root = Path(os.path.abspath(root))
    if root.is_dir():
        root = root.resolve()
    index = _load_json(root, root / "dataset.json")
    problems: list[str] = []
    flawed: set[str] = set()
    _check_top_level(index)
    splits = {split: _read_split(root, index, split, problems, flawed) for split in SPLITS}
    _check_unique_names(splits, problems)
    dataset = DatasetIndex(root=root, training=splits["training"], test=splits["test"])
    return IndexScan(index=dataset, problems=problems, flawed=frozenset(flawed))


def parse_json(text: str | bytes) -> object:
    """``text`` parsed as JSON; ValueError ``not valid JSON: ...`` for bad syntax, a bad encoding, or
    nesting deeper than Python's recursion limit (``[[[[...]]]]``), which ``json`` meets as a RecursionError."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None


def _load_json(root: Path, index_path: Path) -> dict:
    if not index_path.is_file():
        raise DatasetError(root, [f"no dataset.json in {root} (see docs/dataset_format.md)"])
    try:
        index = parse_json(index_path.read_bytes())
    except ValueError as error:
        raise DatasetError(index_path, [str(error)]) from None
    except OSError as error:
        raise DatasetError(index_path, [f"cannot be read: {error}"]) from None
    if not isinstance(index, dict):
        raise DatasetError(index_path, [f'needs a JSON object with a "training" list, got {_short(index)}'])
    if "training" not in index:
        raise DatasetError(index_path, ['needs a "training" list of cases; there is no "training" key'])
    if not isinstance(index["training"], list):
        raise DatasetError(index_path, [f'"training" is {_short(index["training"])}, not a list of cases'])
    return index


def _check_top_level(index: dict) -> None:
    for key, split in (("numTraining", "training"), ("numTest", "test")):
        declared, entries = index.get(key), index.get(split)
        if isinstance(declared, int) and isinstance(entries, list) and declared != len(entries):
            _warn(f"dataset.json: {key} is {declared} but {split!r} lists {len(entries)} cases")


def _read_split(
    root: Path, index: dict, split: str, problems: list[str], flawed: set[str]
) -> tuple[CaseEntry, ...]:
    entries = index.get(split, [])
    if entries is None:
        return ()
    if not isinstance(entries, list):
        problems.append(f'"{split}" is {_short(entries)}, not a list of cases')
        return ()
    cases = []
    for position, entry in enumerate(entries):
        before = len(problems)
        case = _read_entry(root, entry, split, f"{split}[{position}]", problems)
        if case is not None:
            cases.append(case)
            if len(problems) > before:
                flawed.add(case.name)
    return tuple(cases)


def _read_entry(root: Path, entry: object, split: str, where: str, problems: list[str]) -> CaseEntry | None:
    """One case (None without a usable image path), appending all its problems, not just the first."""
    if isinstance(entry, str):  # MSD test lists may hold bare image paths
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        problems.append(f'{where}: needs an "image" path, got {_short(entry)}')
        return None
    unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
    if unknown:
        _warn(f"dataset.json {where}: unknown key(s) {unknown} ignored (known: {list(ENTRY_KEYS)})")
    image = _resolve(root, entry["image"], f"{where} image", problems)
    label = _resolve(root, entry["label"], f"{where} label", problems) if entry.get("label") else None
    name = case_name(image) if image is not None else where
    boxes = _read_boxes(entry.get("boxes"), name, problems)
    lesion_free = _read_lesion_free(entry.get("lesion_free", False), name, boxes, problems)
    if image is not None and label is not None and label == image:
        problems.append(f"{name}: label {entry['label']} is the image file itself")
        label = None
    if image is None:
        return None
    return CaseEntry(name=name, split=split, image=image, label=label, boxes=boxes, lesion_free=lesion_free)


def _resolve(root: Path, relative: object, where: str, problems: list[str]) -> Path | None:
    """``root / relative`` if it is a NIfTI file inside ``root``; symlinks inside are followed."""
    if not isinstance(relative, str) or not relative:
        problems.append(f"{where}: path {_short(relative)} is not a string")
        return None
    if "\x00" in relative:
        problems.append(f"{where}: path {_short(relative)} holds a NUL character")
        return None
    if Path(relative).is_absolute():
        problems.append(f"{where}: path {relative} is absolute; paths are relative to the dataset folder")
        return None
    # A lexical check: '..' may not leave the folder, but a symlink inside it may point elsewhere.
    path = Path(os.path.normpath(root / relative))
    if not path.is_relative_to(root):
        problems.append(f"{where}: path {relative} escapes the dataset folder {root}")
        return None
    if not relative.endswith(NIFTI_SUFFIXES):
        problems.append(f"{where}: path {relative} is not a NIfTI file (.nii or .nii.gz)")
        return None
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError as error:  # e.g. a name too long for the file system
        problems.append(f"{_short(relative)}: cannot be opened ({error.strerror})")
        return None
    if not is_file:
        problems.append(f"{relative}: {'not a file' if exists else 'file does not exist'}")
        return None
    target = path.resolve()
    if not target.is_relative_to(root):
        # Followed, not refused: scans are often linked from shared storage, and are only read
        # (docs/security.md). Said aloud, since dataset.json alone does not show where they are.
        _warn(f"{where}: {relative} is a symbolic link (or lies in a linked folder) to {target}, outside the"
              f" dataset folder {root}; following it")
    return path


def _read_boxes(boxes: object, case: str, problems: list[str]) -> tuple[tuple[int, ...], ...] | None:
    if boxes is None:
        return None
    if not isinstance(boxes, list):
        problems.append(f"{case} boxes: {_short(boxes)} is not a list of [i0, j0, k0, i1, j1, k1]")
        return None
    parsed = []
    for number, box in enumerate(boxes):
        problem = box_problem(box)
        if problem:
            problems.append(f"{case} box {number} {_short(box)}: {problem}")
        else:
            parsed.append(tuple(int(v) for v in box))
    return tuple(parsed)


def box_problem(box: object) -> str | None:
    """What is wrong with a box read from JSON, or None for six ints with start < stop."""
    if not isinstance(box, list) or len(box) != 6:
        return "not six integers [i0, j0, k0, i1, j1, k1]"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        return "not six integers [i0, j0, k0, i1, j1, k1]"
    for axis in range(3):
        if box[axis] >= box[axis + 3]:
            return f"start >= stop on axis {axis}"
    return None


def _read_lesion_free(value: object, case: str, boxes: tuple | None, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{case}: lesion_free {_short(value)} is not true or false")
        return False
    if value and boxes:
        problems.append(f"{case}: lesion_free is true but {len(boxes)} box(es) are given")
    return value


def _check_unique_names(splits: dict[str, tuple[CaseEntry, ...]], problems: list[str]) -> None:
    seen: dict[str, CaseEntry] = {}
    for cases in splits.values():
        for case in cases:
            first = seen.setdefault(case.name, case)
            if first is not case:
                problems.append(
                    f"duplicate case name {case.name!r} (in {first.split} {first.image.name}"
                    f" and {case.split} {case.image.name})"
                )


# --------------------------------------------------------------------------- volumes


def load_image(path: str | Path) -> Volume:
    """Load a 3D PET volume (SUV) as float32; raise :class:`DatasetError` naming the file if unusable.

    Refused: unreadable or truncated files, non-numeric voxels, more than one frame, NaN or inf
    voxels, a minimum below ``-max(1, 0.05 * max)`` SUV, a constant (e.g. all-zero) volume, a
    degenerate affine. Accepted with a :class:`DatasetWarning`: one frame of a 4D image
    (squeezed), integer voxels without a scale slope, a maximum above 500 (not SUV?).
    """
    path = Path(path)
    nifti = open_nifti(path, "image")
    array = _as_3d(read_voxels(nifti, path), path, "image")
    affine = _checked_affine(nifti, path)
    with np.errstate(invalid="ignore", over="ignore"):  # values beyond float32 become inf: refused below
        array = array.astype(np.float32, copy=False)
    problems = image_value_problems(array)
    if problems:
        raise DatasetError(path, problems)
    _warn_image_units(nifti, array, path)
    return Volume(array=array, affine=affine, path=path)


def load_label(path: str | Path, image: Volume) -> np.ndarray:
    """Load a lesion mask on ``image``'s grid as uint8 {0, 1} (any value > 0 is lesion).

    Refused: a shape or affine (beyond 1e-3 mm) other than the image's, NaN, non-integer or
    negative values. Values other than 0 and 1 are accepted with a :class:`DatasetWarning`.
    """
    path = Path(path)
    array = _label_array(path, image)
    values = np.unique(array)
    if values.size > 2 or (values.size == 2 and values[1] != 1) or (values.size == 1 and values[0] not in (0, 1)):
        _warn(f"{path}: label values {_short(values.tolist())}: every value > 0 is taken as lesion")
    return (array > 0).astype(np.uint8)


def load_label_map(path: str | Path, image: Volume, n_labels: int) -> np.ndarray:
    """Load a label map on ``image``'s grid as uint8 values ``0 .. n_labels - 1`` (e.g. pseudo-labels with ignore).

    Refused as :func:`load_label` refuses, and any value outside ``0 .. n_labels - 1``.
    """
    path = Path(path)
    array = _label_array(path, image)
    outside = np.unique(array[(array < 0) | (array >= n_labels)])
    if outside.size:
        raise DatasetError(path, [f"label values {_short(outside.tolist())} are not in 0..{n_labels - 1}"])
    return array.astype(np.uint8)


def _label_array(path: Path, image: Volume) -> np.ndarray:
    nifti = open_nifti(path, "label")
    array = _as_3d(read_voxels(nifti, path), path, "label")
    affine = _checked_affine(nifti, path)
    problems = []
    if array.shape != image.array.shape:
        problems.append(f"label shape {array.shape} != image shape {image.array.shape} ({image.path.name})")
    elif not np.allclose(affine, image.affine, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        difference = float(np.max(np.abs(affine - image.affine)))
        problems.append(
            f"label affine differs from the image's ({image.path.name}) by up to {difference:.4g} mm:\n"
            f"{affine}\nvs\n{image.affine}"
        )
    problems += _label_value_problems(array)
    if problems:
        raise DatasetError(path, problems)
    return array


def open_nifti(path: Path, kind: str) -> nib.spatialimages.SpatialImage:
    """The NIfTI header, checked so that reading its voxels can neither crash nor exhaust memory."""
    try:
        nifti = nib.load(str(path), mmap=False)  # never map (or write through to) an input
        shape = tuple(int(n) for n in nifti.header.get_data_shape())
        dtype = np.dtype(nifti.get_data_dtype())
    except FileNotFoundError:
        raise DatasetError(path, ["file does not exist"]) from None
    except IsADirectoryError:
        raise DatasetError(path, ["is a folder, not a NIfTI file"]) from None
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DatasetError(path, [f"cannot be read as NIfTI: {_describe(error)}"]) from None
    if len(shape) < 3 or min(shape) < 1:
        raise DatasetError(path, [f"{kind} shape {shape} is not a 3D volume"])
    frames = math.prod(shape[3:])
    if frames > 1:
        raise DatasetError(path, [f"{kind} shape {shape} has {frames} frames; wspet needs one 3D volume"])
    if dtype.kind not in "iuf" or dtype.fields is not None:
        raise DatasetError(path, [f"voxel type {dtype} is not a number type (RGB, complex?)"])
    _check_size(path, nifti, shape, dtype)
    _check_voxel_sizes(path, nifti)
    return nifti


def _check_voxel_sizes(path: Path, nifti) -> None:
    """Refuse a header whose affine comes from its voxel sizes (no sform) when one of them is 0.

    nibabel replaces such a size by 1 mm as it reads the header, with only a logged warning: the
    volume would be resampled, measured and predicted at a spacing nobody wrote.
    """
    header = nifti.header
    if "pixdim" not in header.keys() or int(header.get("sform_code", 0)) > 0:  # the sform gives the affine
        return
    header_file = nifti.file_map.get("header", nifti.file_map["image"])  # a .hdr/.img pair, or one .nii
    with nib.openers.ImageOpener(header_file.filename) as stream:
        written = type(header).from_fileobj(stream, check=False)
    sizes = [float(size) for size in written["pixdim"][1:4]]
    if 0.0 in sizes:
        shown = ", ".join(f"{size:.4g}" for size in sizes)
        raise DatasetError(path, [
            f"voxel size ({shown}) mm in the header (pixdim) is 0 along an axis and no sform gives the "
            "spacing; nibabel would take 1 mm there: fix the header"
        ])


def _check_size(path: Path, nifti, shape: tuple[int, ...], dtype: np.dtype) -> None:
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DatasetError(
            path, [f"header shape {shape} ({voxels} voxels) is too large for a PET volume (limit {MAX_VOXELS})"]
        )
    needed = int(getattr(nifti.dataobj, "offset", 0)) + voxels * dtype.itemsize
    size = path.stat().st_size
    capacity = size * MAX_GZIP_RATIO + 1024 if path.name.endswith(".gz") else size
    if needed > capacity:
        raise DatasetError(
            path, [f"truncated: the header promises {needed} bytes ({shape} {dtype}) but the file has {size}"]
        )


def read_voxels(nifti, path: Path) -> np.ndarray:
    try:
        return np.asarray(nifti.dataobj)
    except EOFError as error:  # gzip stream cut short
        raise DatasetError(path, [f"truncated file, cannot read the voxels ({error})"]) from None
    except MemoryError:
        shape = tuple(nifti.header.get_data_shape())
        raise DatasetError(path, [f"header shape {shape} ({math.prod(shape)} voxels) does not fit in memory"]) from None
    except Exception as error:
        raise DatasetError(path, [f"cannot read the voxels (truncated or corrupt?): {_describe(error)}"]) from None


def _describe(error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def _as_3d(array: np.ndarray, path: Path, kind: str) -> np.ndarray:
    """Squeeze single frames (I, J, K, 1, ...) to (I, J, K), with a warning."""
    if array.ndim > 3:
        _warn(f"{path}: 4D {kind} with one frame {array.shape}; using it as 3D")
        array = array.reshape(array.shape[:3])
    return array


def _checked_affine(nifti, path: Path) -> np.ndarray:
    try:
        affine = nifti.affine
    except Exception as error:  # a corrupt qform can fail to decompose
        raise DatasetError(path, [f"affine cannot be read: {_describe(error)}"]) from None
    if affine is None or not np.all(np.isfinite(affine)):
        raise DatasetError(path, [f"affine is not finite:\n{affine}"])
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(spacing > 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        shown = ", ".join(f"{s:.4g}" for s in spacing)
        raise DatasetError(path, [f"affine has a degenerate voxel spacing ({shown}) mm"])
    return affine


def image_value_problems(array: np.ndarray) -> list[str]:
    """NaN/inf, strongly negative and constant images (``array`` float32, in SUV)."""
    values = array
    problems = []
    n_nan, n_inf = int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))
    if n_nan:
        problems.append(f"{n_nan} NaN voxels; fix or drop the case")
    if n_inf:
        problems.append(f"{n_inf} inf voxels (or beyond the float32 range); fix or drop the case")
    finite = values[np.isfinite(values)] if n_nan or n_inf else values
    if finite.size == 0:
        return problems
    low, high = float(finite.min()), float(finite.max())
    floor = -max(NEGATIVE_SUV_FLOOR, NEGATIVE_FRACTION_OF_MAX * max(high, 0.0))
    if low < floor:
        problems.append(
            f"minimum {low:.4g} is below {floor:.4g} (-max(1 SUV, 5% of the maximum {high:.4g})):"
            " not noise; is it SUV, with no offset?"
        )
    if low == high:
        what = "all-zero volume" if high == 0 else f"constant volume (every voxel {high:.4g})"
        problems.append(f"{what}; an empty or blank scan")
    elif float(np.abs(finite).max()) < 1e-30:  # specks of 1e-30 SUV are a blank scan too
        problems.append("all voxels are 0 to within 1e-30; an empty or blank scan")
    return problems


def _warn_image_units(nifti, array: np.ndarray, path: Path) -> None:
    # nibabel moves scl_slope / scl_inter from the header to the data proxy when it loads a file
    slope, inter = getattr(nifti.dataobj, "slope", 1.0), getattr(nifti.dataobj, "inter", 0.0)
    scaled = slope != 1 or inter != 0
    if nifti.get_data_dtype().kind in "iu" and not scaled:
        _warn(
            f"{path}: integer voxels ({nifti.get_data_dtype()}) without a scale slope; taken as SUV"
            " as they are: check the units (float SUV expected)"
        )
    high = float(np.nanmax(array)) if array.size else 0.0
    if high > MAX_PLAUSIBLE_SUV:
        _warn(f"{path}: maximum {high:.4g} is not a plausible SUV (> {MAX_PLAUSIBLE_SUV:g}); Bq/ml or counts?")


def _label_value_problems(array: np.ndarray) -> list[str]:
    if array.dtype.kind in "iu":
        negative = int(np.count_nonzero(array < 0))
        return [f"{negative} negative label voxels (e.g. {int(array.min())}); labels are 0 or > 0"] if negative else []
    with np.errstate(invalid="ignore", over="ignore"):
        values = array.astype(np.float64, copy=False)
    problems = []
    bad = ~np.isfinite(values)
    if bad.any():
        problems.append(f"{int(bad.sum())} NaN or inf label voxels")
    values = np.where(bad, 0.0, values)
    fractional = values != np.round(values)
    if fractional.any():
        example = float(values[fractional].flat[0])
        problems.append(
            f"{int(fractional.sum())} label voxels are not integers (e.g. {example:.4g}); a label holds"
            " 0 (background) and 1 (lesion): a probability map or an interpolated mask?"
        )
    if (values < 0).any():
        problems.append(f"{int((values < 0).sum())} negative label voxels (e.g. {float(values.min()):.4g})")
    return problems


# --------------------------------------------------------------------------- boxes


def case_boxes(
    case: CaseEntry,
    image: Volume,
    label: np.ndarray | None = None,
    margin_mm: float = 0.0,
) -> list[list[int]]:
    """The case's boxes checked against the volume, or boxes derived from ``label`` if none given.

    Derived boxes are the tight box of each 26-connected lesion component grown by
    ``ceil(margin_mm / spacing)`` voxels on each side per axis, clipped to the volume.
    A given box partly outside the volume is clipped with a warning when at least half of it
    is inside; otherwise it is an error naming the case and the box. When ``label`` is given
    too, the boxes must hold at least half of its lesion voxels.

    A training case must come out with at least one box unless it is ``lesion_free``; an
    empty list is returned only for those (and for test cases).
    """
    shape = image.array.shape
    if case.lesion_free and label is not None and label.any():
        name = case.label.name if case.label is not None else "the label"
        n_lesion = int(np.count_nonzero(label))
        raise DatasetError(case.image, [f"{case.name}: lesion_free is true but {name} has {n_lesion} lesion voxels"])
    if case.boxes is None:
        if label is None:
            raise DatasetError(case.image, [f"{case.name} has neither boxes nor a label to derive them from"])
        margin = [math.ceil(margin_mm / s) for s in image.spacing]
        boxes = boxes_from_label(label, margin_vox=margin)
    else:
        boxes = _boxes_inside(case, shape)
        if label is not None:
            _check_boxes_against_label(case, boxes, label)
    if not boxes and case.split == "training" and not case.lesion_free:
        source = f"the label {case.label.name} is empty" if case.boxes is None else "its box list is empty"
        raise DatasetError(
            case.image,
            [
                f"{case.name}: no lesion: {source}; a training case needs one"
                ' (mark it "lesion_free": true if it has none)'
            ],
        )
    return boxes


def _boxes_inside(case: CaseEntry, shape: tuple[int, ...]) -> list[list[int]]:
    boxes, problems = [], []
    for number, box in enumerate(case.boxes):
        clipped, fraction = clip_box(box, shape)
        if fraction >= 1.0:
            boxes.append(list(box))
        elif fraction >= MIN_BOX_FRACTION_INSIDE:
            _warn(f"{case.name} box {number} {list(box)}: clipped to volume {shape} as {clipped}")
            boxes.append(list(clipped))
        else:
            problems.append(f"{case.name} box {number} {list(box)}: only {fraction:.0%} inside the volume {shape}")
    if problems:
        raise DatasetError(case.image, problems)
    return boxes


def _check_boxes_against_label(case: CaseEntry, boxes: list[list[int]], label: np.ndarray) -> None:
    lesion = label > 0
    n_lesion = int(np.count_nonzero(lesion))
    name = case.label.name if case.label is not None else "the label"
    if not boxes:
        if n_lesion:
            raise DatasetError(case.image, [f"{case.name}: box list is empty but {name} has {n_lesion} lesion voxels"])
        return
    if n_lesion == 0:
        raise DatasetError(case.image, [f"{case.name}: {name} has no lesion voxels but {len(boxes)} box(es) are given"])
    inside = boxes_to_mask(boxes, label.shape).astype(bool)
    coverage = int(np.count_nonzero(lesion & inside)) / n_lesion
    if coverage < MIN_LABEL_COVERAGE:
        raise DatasetError(
            case.image,
            [
                f"{case.name}: the boxes hold {coverage:.0%} of the {n_lesion} lesion voxels of {name}"
                f" (at least {MIN_LABEL_COVERAGE:.0%} expected); boxes are [i0, j0, k0, i1, j1, k1]"
                " voxel indices of the array as nibabel loads it"
            ],
        )
    for number, box in enumerate(boxes):
        if not lesion[box[0]:box[3], box[1]:box[4], box[2]:box[5]].any():
            _warn(f"{case.name} box {number} {box}: holds no lesion voxel of {name}")
