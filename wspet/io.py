"""Atomic output: every file wspet writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The rename is atomic on POSIX, so a process killed mid-write leaves the old file (or none),
    never half of the new one. The temporary keeps ``path``'s suffixes (``.nii.gz`` tells nibabel
    to compress). On error the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode open() would, so that the rest of
        # a lab group can read the masks and checkpoints as with any other file its umask allows.
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode() -> int:
    """0o666 less the process's umask (read by setting it and putting it straight back)."""
    return 0o666 & ~_umask()


def new_folder_mode() -> int:
    """0o777 less the process's umask: the mode ``mkdir`` would give, for folders made by ``mkdtemp``."""
    return 0o777 & ~_umask()


def _umask() -> int:
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def publish(source: str | os.PathLike, target: str | os.PathLike, overwrite: bool) -> Path:
    """Move the finished file ``source`` onto ``target`` (same file system); return ``target``.

    With ``overwrite`` an existing ``target`` is replaced (atomic rename). Without it ``target`` is
    created exclusively, by a hard link that fails if any file is there, even one another process
    made a moment ago: FileExistsError naming it, and the other file is left as it was. File systems
    without hard links get an ``O_EXCL`` reservation instead, then the rename.
    """
    source, target = Path(source), Path(target)
    if overwrite:
        os.replace(source, target)
        return target
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(f"{target}: exists (another run wrote it?); pass overwrite=true to replace it") from None
    except OSError:  # no hard links here (EPERM, ENOTSUP, ...): reserve the name, then rename onto it
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _new_file_mode()))
        except FileExistsError:
            raise FileExistsError(f"{target}: exists (another run wrote it?); pass overwrite=true to replace it") from None
        os.replace(source, target)
        return target
    source.unlink()
    return target


# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A string a spreadsheet would run as a formula, prefixed with ``'``; any other value as it is."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV; ``columns`` defaults to the first row's keys.

    Text cells that start like a formula (``= + - @``, tab, CR: e.g. a hostile case name) get a
    leading ``'`` (:func:`spreadsheet_safe`); numbers are written as they are.
    """
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
    return Path(path)


NIFTI_SUFFIXES = (".nii.gz", ".nii")  # longest first: a name ends in one of them once stripped


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    header: nib.Nifti1Header | None = None,
    like: str | os.PathLike | None = None,
) -> Path:
    """Save a 3D array as NIfTI with ``affine`` atomically; the one NIfTI writer of wspet.

    The header's other fields (units, descriptions) come from ``header``, or from the NIfTI file
    ``like`` when it is one (a mask saved beside its scan); otherwise units are mm and s.
    Raises ValueError for an array that is not 3-D or a path not ending in .nii or .nii.gz.
    """
    path = Path(path)
    if np.ndim(array) != 3:
        raise ValueError(f"{path}: array shape {np.shape(array)} is not 3-D")
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: output must end in .nii or .nii.gz")
    if header is None and like is not None and str(like).endswith(NIFTI_SUFFIXES) and Path(like).is_file():
        header = nib.load(str(like)).header
    image = nib.Nifti1Image(array, affine, header=header)
    if header is None:
        image.header.set_xyzt_units("mm", "sec")
    image.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path
