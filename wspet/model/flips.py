"""Which volume axes to mirror a model's input along at test time (``mirror_axes``).

nnU-Net mirrors its input along the axes its training flipped and averages the answers; a flip the
network never saw in training is a view it was not taught. A checkpoint records those axes as
``training_flips`` (``data.flip_axes``, empty when ``data.flip_probability`` is 0); ``auto`` uses
them. The mirroring itself is ``wspet.inference.sliding_window.mirrored``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import ListConfig

if TYPE_CHECKING:
    from wspet.model.module import LesionSegmenter

AUTO_MIRROR = "auto"  # mirror_axes: each model's own training flips


def check_mirror_axes(mirror_axes: str | Sequence[int]) -> str | tuple[int, ...]:
    """``mirror_axes`` as ``"auto"`` or a sorted int tuple; ValueError unless one of them.

    ``auto``: each model's own training flips (:func:`model_mirror_axes`); a list: distinct
    volume axes among 0, 1, 2 (``[]``: no mirroring).
    """
    if isinstance(mirror_axes, str) and mirror_axes == AUTO_MIRROR:
        return AUTO_MIRROR
    axes = tuple(mirror_axes) if isinstance(mirror_axes, (Sequence, ListConfig)) and not isinstance(mirror_axes, str) else None
    if axes is None or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a not in (0, 1, 2)
                           for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror_axes {mirror_axes!r} needs auto or a list of distinct volume axes among 0, 1, 2")
    return tuple(sorted(int(a) for a in axes))


def model_mirror_axes(model: LesionSegmenter, mirror_axes: str | Sequence[int]) -> tuple[int, ...]:
    """The axes to mirror ``model``'s input along: ``mirror_axes``, or for ``auto`` the axes its
    training flipped (``training_flips`` in its checkpoint; none where the checkpoint predates them).

    ValueError for a bad ``mirror_axes`` or a checkpoint's bad ``training_flips``.
    """
    axes = check_mirror_axes(mirror_axes)
    if axes != AUTO_MIRROR:
        return axes
    flips = model.hparams.get("training_flips")
    if flips is None:
        return ()
    try:
        flip_axes = None if isinstance(flips, str) else check_mirror_axes(flips)
    except ValueError:
        flip_axes = None
    if flip_axes is None:  # the checkpoint is untrusted: its value is checked like the user's
        raise ValueError(f"the checkpoint's training_flips {flips!r} are not distinct volume axes among 0, 1, 2")
    return flip_axes
