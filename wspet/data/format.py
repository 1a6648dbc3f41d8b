"""The wspet dataset format (Medical Segmentation Decathlon style): read and validate it.

See docs/dataset_format.md. ``read_dataset`` checks the index (``dataset.json``) and reports every
problem at once; ``load_image`` / ``load_label`` / ``case_boxes`` check each volume as it is read.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from wspet.data.boxes import boxes_from_label, clip_box

SPLITS = ("training", "test")
# A box sticking out of the volume is clipped (with a warning) only while most of it is inside.
MIN_BOX_FRACTION_INSIDE = 0.5
AFFINE_TOLERANCE_MM = 1e-3


class DatasetError(ValueError):
    """A dataset that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, where: str | Path, problems: Sequence[str]) -> None:
        self.where = str(where)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.where}: {len(self.problems)} problem(s)\n{lines}")


@dataclass(frozen=True)
class CaseEntry:
    """One case of ``dataset.json``: paths are absolute, ``boxes`` is None when not given."""

    name: str
    split: str
    image: Path
    label: Path | None
    boxes: tuple[tuple[int, ...], ...] | None


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
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_dataset(root: str | Path) -> DatasetIndex:
    """Parse and check ``root/dataset.json``; raise :class:`DatasetError` listing every problem."""
    root = Path(root).resolve()
    index_path = root / "dataset.json"
    if not index_path.is_file():
        raise DatasetError(root, [f"no dataset.json in {root} (see docs/dataset_format.md)"])
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(index_path, [f"not valid JSON: {error}"]) from None
    if not isinstance(index, dict) or not isinstance(index.get("training"), list):
        raise DatasetError(index_path, ['needs a "training" list of cases'])
    problems: list[str] = []
    splits = {split: _read_split(root, index, split, problems) for split in SPLITS}
    _check_unique_names(splits, problems)
    if problems:
        raise DatasetError(index_path, problems)
    return DatasetIndex(root=root, training=splits["training"], test=splits["test"])


def _read_split(root: Path, index: dict, split: str, problems: list[str]) -> tuple[CaseEntry, ...]:
    entries = index.get(split, [])
    if not isinstance(entries, list):
        problems.append(f'"{split}" is {type(entries).__name__}, not a list of cases')
        return ()
    cases = []
    for position, entry in enumerate(entries):
        where = f"{split}[{position}]"
        case = _read_entry(root, entry, split, where, problems)
        if case is not None:
            cases.append(case)
    return tuple(cases)


def _read_entry(root: Path, entry: object, split: str, where: str, problems: list[str]) -> CaseEntry | None:
    if isinstance(entry, str):  # MSD test lists may hold bare image paths
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        problems.append(f'{where}: needs an "image" path, got {entry!r}')
        return None
    image = _resolve(root, entry["image"], f"{where} image", problems)
    label = _resolve(root, entry["label"], f"{where} label", problems) if entry.get("label") else None
    boxes = _read_boxes(entry.get("boxes"), f"{case_name(entry['image'])}", problems)
    if image is None:
        return None
    return CaseEntry(name=case_name(image), split=split, image=image, label=label, boxes=boxes)


def _resolve(root: Path, relative: object, where: str, problems: list[str]) -> Path | None:
    if not isinstance(relative, str) or not relative:
        problems.append(f"{where}: path {relative!r} is not a string")
        return None
    if Path(relative).is_absolute():
        problems.append(f"{where}: path {relative} is absolute; paths are relative to the dataset folder")
        return None
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        problems.append(f"{where}: path {relative} escapes the dataset folder {root}")
        return None
    if not path.is_file():
        problems.append(f"{relative}: file does not exist")
        return None
    return path


def _read_boxes(boxes: object, case: str, problems: list[str]) -> tuple[tuple[int, ...], ...] | None:
    if boxes is None:
        return None
    if not isinstance(boxes, list):
        problems.append(f"{case} boxes: {boxes!r} is not a list of [i0, j0, k0, i1, j1, k1]")
        return None
    parsed = []
    for number, box in enumerate(boxes):
        problem = _box_problem(box)
        if problem:
            problems.append(f"{case} box {number} {box!r}: {problem}")
        else:
            parsed.append(tuple(int(v) for v in box))
    return tuple(parsed)


def _box_problem(box: object) -> str | None:
    if not isinstance(box, list) or len(box) != 6:
        return "not six integers [i0, j0, k0, i1, j1, k1]"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        return "not six integers [i0, j0, k0, i1, j1, k1]"
    for axis in range(3):
        if box[axis] >= box[axis + 3]:
            return f"start >= stop on axis {axis}"
    return None


def _check_unique_names(splits: dict[str, tuple[CaseEntry, ...]], problems: list[str]) -> None:
    seen: dict[str, str] = {}
    for split, cases in splits.items():
        for case in cases:
            if case.name in seen:
                problems.append(f"duplicate case name {case.name!r} (in {seen[case.name]} and {split})")
            seen[case.name] = split


def load_image(path: str | Path) -> Volume:
    """Load a 3D PET volume as float32; raise :class:`DatasetError` naming the file if unusable.

    A 4D volume with a single frame is squeezed (with a warning); more frames are refused.
    """
    path = Path(path)
    array, affine = _load_nifti(path)
    if array.ndim == 4 and array.shape[3] == 1:
        warnings.warn(f"{path}: 4D image with one frame {array.shape}; using it as 3D", stacklevel=2)
        array = array[..., 0]
    if array.ndim != 3:
        raise DatasetError(path, [f"image shape {array.shape} is not 3D"])
    array = array.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise DatasetError(path, [f"{bad} NaN or inf voxels; fix or drop the case"])
    return Volume(array=array, affine=affine, path=path)


def load_label(path: str | Path, image: Volume) -> np.ndarray:
    """Load a lesion mask on ``image``'s grid as uint8 {0, 1} (any value > 0 is lesion)."""
    path = Path(path)
    array, affine = _load_nifti(path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    problems = []
    if array.shape != image.array.shape:
        problems.append(f"label shape {array.shape} != image shape {image.array.shape} ({image.path.name})")
    elif not np.allclose(affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        problems.append(f"label affine differs from the image's ({image.path.name}):\n{affine}\nvs\n{image.affine}")
    if problems:
        raise DatasetError(path, problems)
    return (array > 0).astype(np.uint8)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        nifti = nib.load(str(path))
        array = np.asarray(nifti.dataobj)
    except FileNotFoundError:
        raise DatasetError(path, ["file does not exist"]) from None
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DatasetError(path, [f"cannot be read as NIfTI: {error}"]) from None
    return array, np.asarray(nifti.affine, dtype=np.float64)


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
    is inside; otherwise it is an error naming the case and the box.
    """
    shape = image.array.shape
    if case.boxes is None:
        if label is None:
            raise DatasetError(case.name, ["has neither boxes nor a label to derive them from"])
        margin = [math.ceil(margin_mm / s) for s in image.spacing]
        return boxes_from_label(label, margin_vox=margin)
    boxes, problems = [], []
    for number, box in enumerate(case.boxes):
        clipped, fraction = clip_box(box, shape)
        if fraction >= 1.0:
            boxes.append(list(box))
        elif fraction >= MIN_BOX_FRACTION_INSIDE:
            warnings.warn(f"{case.name} box {number} {list(box)}: clipped to volume {shape} as {clipped}", stacklevel=2)
            boxes.append(list(clipped))
        else:
            problems.append(
                f"{case.name} box {number} {list(box)}: only {fraction:.0%} inside the volume {shape}"
            )
    if problems:
        raise DatasetError(case.image, problems)
    return boxes
