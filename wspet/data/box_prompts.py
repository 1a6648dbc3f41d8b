"""Boxes given at test time (``predict.py boxes=FILE``): a file of voxel boxes per case, read as untrusted input.

Two formats, chosen by the file's suffix:

- ``.json``: ``{"<case>": [[i0, j0, k0, i1, j1, k1], ...], ...}``, each list in the dataset
  format's box convention (docs/dataset_format.md);
- ``.csv``: a header ``case,i0,j0,k0,i1,j1,k1`` and one box per row.

Boxes are half-open voxel indices of the image array as nibabel loads it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from wspet.data.format import box_problem, parse_json

Box = tuple[int, int, int, int, int, int]
CSV_COLUMNS = ("case", "i0", "j0", "k0", "i1", "j1", "k1")
MAX_FILE_BYTES = 64 * 2**20  # a box file is small; a larger one is a mistake or an attack


def read_box_prompts(path: str | Path) -> dict[str, list[Box]]:
    """``{case: [box, ...]}`` from a ``.json`` or ``.csv`` box file.

    Raises FileNotFoundError for a missing file and ValueError naming the file for any other
    problem, listing every bad entry (case, row or box number, and the value).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: box file does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is too large for a box file (limit {MAX_FILE_BYTES})")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: a box file is .json or .csv, not {suffix or 'without a suffix'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the box file ({error})") from None
    problems: list[str] = []
    boxes = _from_json(text, problems) if suffix == ".json" else _from_csv(text, problems)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""))
    return boxes


def _from_json(text: str, problems: list[str]) -> dict[str, list[Box]]:
    try:
        data = parse_json(text)
    except ValueError as error:
        problems.append(str(error))
        return {}
    if not isinstance(data, dict):
        problems.append(f"expected an object {{case: [[i0, j0, k0, i1, j1, k1], ...]}}, got {type(data).__name__}")
        return {}
    boxes: dict[str, list[Box]] = {}
    for case, entries in data.items():
        if not isinstance(entries, list):
            problems.append(f"case {case!r}: {entries!r:.60} is not a list of boxes")
            continue
        boxes[case] = []
        for number, box in enumerate(entries):
            _add(boxes[case], box, f"case {case!r} box {number}", problems)
    return boxes


def _from_csv(text: str, problems: list[str]) -> dict[str, list[Box]]:
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        problems.append(f"the header must be {','.join(CSV_COLUMNS)}, got {','.join(reader.fieldnames or [])!r:.80}")
        return {}
    boxes: dict[str, list[Box]] = {}
    for row_number, row in enumerate(reader, start=2):
        try:
            box = [int(row[column]) for column in CSV_COLUMNS[1:]]
        except (TypeError, ValueError):
            problems.append(f"row {row_number}: corners {[row.get(c) for c in CSV_COLUMNS[1:]]} are not integers")
            continue
        _add(boxes.setdefault(row["case"], []), box, f"row {row_number} (case {row['case']!r})", problems)
    return boxes


def _add(boxes: list[Box], box: object, where: str, problems: list[str]) -> None:
    problem = box_problem(box)
    if problem:
        problems.append(f"{where} {box!r:.60}: {problem}")
    else:
        boxes.append(tuple(int(v) for v in box))  # type: ignore[arg-type]
