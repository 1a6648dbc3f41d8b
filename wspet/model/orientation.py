"""The axis order a model was trained in (``training_orientation``), and scans turned to it.

A network learns the axis order of its training volumes: which array axis runs left-right and
which head-feet, and which way. A scan stored otherwise (RAS from one converter where training
read LPS, or its axes permuted) would show it anatomy it never saw that way, and its mask would
be silently worse. Training records the axis codes of its volumes (nibabel's ``aff2axcodes``,
e.g. ``["L", "P", "S"]``: the first axis runs towards the patient's left); prediction turns a
scan that differs to them with nibabel's orientation tools, and the probabilities back to the
scan's own voxel grid. A turn only permutes and flips axes: no voxel is interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

# Each volume axis runs along one of these anatomical directions, each direction used once.
AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def check_orientation(codes: object) -> tuple[str, str, str]:
    """``codes`` as three axis codes, one of each pair L/R, P/A, I/S; ValueError naming the value."""
    letters = tuple(codes) if isinstance(codes, (list, tuple)) else None
    if letters is not None and len(letters) == 3 and all(isinstance(c, str) for c in letters):
        pairs = [next((i for i, pair in enumerate(AXIS_PAIRS) if code in pair), None) for code in letters]
        if None not in pairs and sorted(pairs) == [0, 1, 2]:
            return letters
    raise ValueError(f"orientation {codes!r} is not three axis codes, one each of L/R, P/A and I/S")


def model_orientation(model) -> tuple[str, str, str] | None:
    """The axis codes ``model``'s training volumes had (``training_orientation`` in its checkpoint);
    None where unknown (a checkpoint from before they were recorded).

    ValueError for a checkpoint's bad value: the file is untrusted.
    """
    codes = model.hparams.get("training_orientation")
    if codes is None:
        return None
    try:
        return check_orientation(codes)
    except ValueError:
        raise ValueError(f"the checkpoint's training_orientation {codes!r} is not three axis codes, "
                         "one each of L/R, P/A and I/S") from None


@dataclass(frozen=True)
class Turn:
    """The axis permutation and flips taking a scan's voxel grid to another orientation.

    ``to`` and ``back`` are nibabel orientation transforms (3, 2): row ``i`` sends input axis
    ``i`` to output axis ``[i, 0]``, reversed where ``[i, 1]`` is -1.
    """

    to: np.ndarray
    back: np.ndarray
    source: tuple[str, ...]
    target: tuple[str, ...]

    def apply(self, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``array`` (I, J, K) in the target orientation, and its affine (the same world points)."""
        turned = np.ascontiguousarray(nib.orientations.apply_orientation(array, self.to))
        return turned, affine @ nib.orientations.inv_ornt_aff(self.to, array.shape)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """An ``array`` on the turned grid, put back on the scan's own (I, J, K) grid."""
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, self.back))

    def spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        """The scan's voxel ``spacing`` (mm, per axis) in the target axis order."""
        turned = [0.0] * 3
        for axis, (target, _) in enumerate(self.to):
            turned[int(target)] = float(spacing[axis])
        return tuple(turned)


def turn_to(affine: np.ndarray | None, codes: Sequence[str] | None) -> Turn | None:
    """The :class:`Turn` from the grid of ``affine`` (4, 4) to orientation ``codes``; None where
    either is unknown or the scan is in that orientation already."""
    if affine is None or codes is None:
        return None
    source = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    if np.array_equal(source, target):
        return None
    return Turn(
        to=nib.orientations.ornt_transform(source, target),
        back=nib.orientations.ornt_transform(target, source),
        source=nib.orientations.ornt2axcodes(source),
        target=tuple(codes),
    )
