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


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV; ``columns`` defaults to the first row's keys."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Save a 3D array as NIfTI with ``affine`` (and the reference ``header``'s fields) atomically."""
    image = nib.Nifti1Image(array, affine, header=header)
    if header is None:
        image.header.set_xyzt_units("mm", "sec")
    image.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
