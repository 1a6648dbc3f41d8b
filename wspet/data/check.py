"""Check a whole dataset before any training time is spent: ``python -m wspet.data.check DATA``.

:func:`validate_dataset` runs the reader's checks (``wspet.data.format``) over every case,
loading each volume once, adds the checks across cases (one voxel spacing, one orientation)
and collects every problem and warning instead of stopping at the first. ``train(cfg)`` calls
it before fitting; the CLI prints its report and exits 1 when there is any problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from wspet.data.format import (
    SPLITS,
    CaseEntry,
    DatasetError,
    DatasetWarning,
    Volume,
    case_boxes,
    load_image,
    load_label,
    scan_dataset,
)
from wspet.model.orientation import turn_to

SUPERVISIONS = ("box", "label", "pseudo")
DEFAULT_MAX_SPACING_RATIO = 1.2


@dataclass
class ValidationReport:
    """Every problem (refuse the dataset) and warning (accepted, changed or doubtful) found.

    Each message starts with the file (relative to ``root``) or the case it concerns.
    ``spacings`` maps each case whose image could be read to its voxel spacing in mm.
    ``names_root``: whether an error names ``root`` before the problems (a dataset), or not
    (images to predict, whose messages name their files and whose root is only the current folder).
    """

    root: Path
    names_root: bool = True
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_training: int = 0
    n_test: int = 0
    n_volumes: int = 0
    spacings: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        return self.n_training + self.n_test

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the dataset, its size and the verdict."""
        size = f"{self.n_training} training + {self.n_test} test cases, {self.n_volumes} volumes read"
        verdict = "clean" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{self.root}: {verdict} ({size}, {len(self.warnings)} warning(s))"

    def raise_if_problems(self) -> None:
        """Raise :class:`DatasetError` listing every problem; do nothing for a clean dataset."""
        if self.problems:
            raise DatasetError(self.root if self.names_root else None, self.problems)


def validate_dataset(
    root: str | Path,
    supervision: str = "box",
    box_margin_mm: float = 5.0,
    max_spacing_ratio: float | None = DEFAULT_MAX_SPACING_RATIO,
    splits: Sequence[str] = SPLITS,
) -> ValidationReport:
    """Check the dataset at ``root`` for training with ``supervision`` (``box`` or ``label``).

    Reads ``dataset.json`` and every image and label of ``splits`` once. Training cases also
    need boxes (given, or derived from the label with ``box_margin_mm``) and at least one lesion
    unless marked ``lesion_free``; with ``supervision="label"`` they need a label. A case whose
    spacing differs from the median spacing by more than ``max_spacing_ratio`` on any axis is a
    problem (the model assumes one spacing; None turns the check off). Never raises for a bad
    dataset: everything found is in the returned report.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision {supervision!r} is not one of {SUPERVISIONS}")
    if max_spacing_ratio is not None and not max_spacing_ratio >= 1.0:
        raise ValueError(f"max_spacing_ratio {max_spacing_ratio!r} is not >= 1 (or None)")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"splits {unknown} are not among {SPLITS}")
    root = Path(os.path.abspath(root))
    report = ValidationReport(root=root)
    relative = _relativiser(root)
    try:
        scan = _collect(report, relative, lambda: scan_dataset(root))
    except DatasetError as error:
        # The report names the root itself: a problem of the root is not prefixed with it twice.
        at_root = Path(error.where) in (root, root.resolve())
        report.problems += [relative(p if at_root else f"{error.where}: {p}") for p in error.problems]
        return report
    report.root = scan.index.root
    report.problems += [relative(f"dataset.json: {p}") for p in scan.problems]
    report.n_training, report.n_test = len(scan.index.training), len(scan.index.test)
    orientations: dict[str, tuple[str, ...]] = {}
    affines: dict[str, np.ndarray] = {}
    for split in splits:
        for case in scan.index.split(split):
            check_boxes = case.name not in scan.flawed  # a flawed entry's boxes are reported already
            image = _check_case(case, report, relative, supervision, box_margin_mm, check_boxes)
            if image is not None:
                report.spacings[case.name] = image.spacing
                orientations[case.name] = nib.aff2axcodes(image.affine)
                affines[case.name] = image.affine
    cases = {c.name: c for split in splits for c in scan.index.split(split)}
    if max_spacing_ratio is not None:
        # Training turns every volume to the majority's axis order, so spacings compare in that order.
        turned = spacings_in_order(report.spacings, affines, majority_orientation(orientations.values()))
        report.problems += [relative(p) for p in spacing_problems(turned, cases, max_spacing_ratio)]
    report.warnings += [relative(w) for w in _orientation_warnings(orientations, cases)]
    return report


def validate_images(
    paths: Sequence[str | Path], max_spacing_ratio: float | None = None, root: str | Path | None = None
) -> ValidationReport:
    """Check PET images to predict on (no index, labels or boxes): every problem and warning.

    ``root`` (default: the current folder) is the folder messages are relative to. With
    ``max_spacing_ratio``, images whose spacing is that far off their median are problems too.
    """
    root = Path(os.path.abspath(root or "."))
    report = ValidationReport(root=root, names_root=False, n_test=len(paths))
    relative = _relativiser(root)
    cases = {}
    for path in paths:
        path = Path(path)
        try:
            image = _collect(report, relative, lambda: load_image(path))
        except DatasetError as error:
            report.problems.extend(relative(f"{error.where}: {p}") for p in error.problems)
            continue
        report.n_volumes += 1
        report.spacings[str(path)] = image.spacing
        cases[str(path)] = CaseEntry(str(path), "test", path, None, None)
    if max_spacing_ratio is not None:
        report.problems += [relative(p) for p in spacing_problems(report.spacings, cases, max_spacing_ratio)]
    return report


def _relativiser(root: Path) -> Callable[[str], str]:
    prefixes = {f"{root}{os.sep}", f"{Path(root).resolve()}{os.sep}"}

    def relative(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    return relative


def _collect(report: ValidationReport, relative: Callable[[str], str], step: Callable):
    """Run ``step``, moving its :class:`DatasetWarning` s into the report; return its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        try:
            return step()
        finally:
            for warning in caught:
                if issubclass(warning.category, DatasetWarning):
                    report.warnings.append(relative(str(warning.message)))
                else:  # not ours: let it through as it would have gone
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _check_case(
    case: CaseEntry,
    report: ValidationReport,
    relative: Callable[[str], str],
    supervision: str,
    box_margin_mm: float,
    check_boxes: bool,
) -> Volume | None:
    """Load the case's image and label once and run every per-case check; return the image."""

    def attempt(step: Callable):
        try:
            return _collect(report, relative, step)
        except DatasetError as error:
            report.problems.extend(relative(f"{error.where}: {p}") for p in error.problems)
            return None

    image = attempt(lambda: load_image(case.image))
    report.n_volumes += image is not None
    if image is None:
        return None
    label = None
    if case.label is not None:
        label = attempt(lambda: load_label(case.label, image))
        report.n_volumes += label is not None
        if label is None:
            return image  # a broken label: its boxes and lesions cannot be judged
    if case.split != "training" and case.boxes is None:
        return image
    if case.split == "training" and supervision == "label" and case.label is None:
        report.problems.append(relative(f"{case.image}: {case.name} has no label, needed for supervision=label"))
        return image
    if check_boxes:
        attempt(lambda: case_boxes(case, image, label, margin_mm=box_margin_mm))
    return image


def spacings_in_order(
    spacings: dict[str, tuple[float, float, float]], affines: dict[str, np.ndarray], codes: Sequence[str] | None
) -> dict[str, tuple[float, ...]]:
    """Each case's voxel spacing (mm per axis) in the axis order ``codes`` (its own where unknown)."""
    turns = {name: turn_to(affines.get(name), codes) for name in spacings}
    return {name: turns[name].spacing(s) if turns[name] else tuple(s) for name, s in spacings.items()}


def spacing_problems(
    spacings: dict[str, tuple[float, float, float]],
    cases: dict[str, CaseEntry],
    max_ratio: float,
) -> list[str]:
    """One problem per case whose spacing is more than ``max_ratio`` times off the median, per axis."""
    if len(spacings) < 2:
        return []
    median = np.median(np.array(list(spacings.values())), axis=0)
    problems = []
    for name, spacing in spacings.items():
        ratios = np.maximum(np.array(spacing) / median, median / np.array(spacing))
        axis = int(np.argmax(ratios))
        if ratios[axis] > max_ratio:
            problems.append(
                f"{cases[name].image}: spacing {spacing_text(spacing)} mm is {ratios[axis]:.2f}x the median"
                f" {spacing_text(median)} mm on axis {axis} (limit {max_ratio:g}x): the model assumes one spacing;"
                " resample it (data.target_spacing=auto, training's default, does), or drop it"
            )
    return problems


def majority_orientation(orientations: Iterable[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The axis codes (``("L", "P", "S")``) most volumes have, the first seen on a tie; None for none."""
    counts = Counter(orientations)
    return counts.most_common(1)[0][0] if counts else None


def _orientation_warnings(orientations: dict[str, tuple[str, ...]], cases: dict[str, CaseEntry]) -> list[str]:
    """Cases whose voxel axes point elsewhere than most cases' (boxes and patches follow the array)."""
    usual = majority_orientation(orientations.values())
    if usual is None:
        return []
    return [
        f"{cases[name].image}: voxel axes {''.join(codes)} differ from most cases' {''.join(usual)};"
        " training turns it to theirs with its boxes (check that its boxes are given in its own voxel axes)"
        for name, codes in orientations.items()
        if codes != usual
    ]


def spacing_text(spacing: Sequence[float]) -> str:
    """``(3.5, 3.5, 3.1)``: a spacing in mm for messages, 3 significant digits."""
    return "(" + ", ".join(f"{s:.3g}" for s in spacing) + ")"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wspet.data.check",
        description="Check a wspet dataset folder; print every problem; exit 1 if there is any.",
    )
    parser.add_argument("data", help="dataset folder holding dataset.json")
    parser.add_argument("--supervision", choices=SUPERVISIONS, default="box",
                        help="box: weak training from boxes (default); pseudo: from labels made in the boxes; label: full supervision")
    parser.add_argument("--box-margin-mm", type=float, default=5.0,
                        help="margin of boxes derived from labels (data.box_margin_mm)")
    parser.add_argument("--max-spacing-ratio", type=float, default=DEFAULT_MAX_SPACING_RATIO,
                        help="largest accepted ratio of a case's spacing to the median, per axis")
    parser.add_argument("--no-spacing-check", action="store_true", help="accept any spacing")
    args = parser.parse_args(argv)
    report = validate_dataset(
        args.data,
        supervision=args.supervision,
        box_margin_mm=args.box_margin_mm,
        max_spacing_ratio=None if args.no_spacing_check else args.max_spacing_ratio,
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
