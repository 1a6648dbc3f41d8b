"""Overlays of a prediction and the ground truth on PET slices, as in the paper's Figure 2.

Used by the sweep report (figure2.png) and by each run's evaluation (overlays.png, also sent to
W&B). Arrays are (i, j, k) with k the superior-inferior axis; which end is superior comes from
the affine.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


PREDICTION_COLOUR = "#00c000"  # green, as in the paper's Figure 2
TRUTH_COLOUR = "#b030e0"  # purple


def largest_slice(pred: np.ndarray, truth: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice where prediction and truth together cover most voxels.

    A voxel in both counts twice, so a slice showing both beats one showing either alone; among
    equal slices the middle one is taken. The volume's middle when both masks are empty.
    """
    others = tuple(a for a in range(pred.ndim) if a != axis)
    counts = pred.sum(axis=others, dtype=np.int64) + truth.sum(axis=others, dtype=np.int64)
    if not counts.any():
        return pred.shape[axis] // 2
    best = np.flatnonzero(counts == counts.max())
    return int(best[len(best) // 2])


def superior_is_increasing_k(affine: np.ndarray) -> bool:
    # Array axis k is superior-inferior; which end is superior comes from the affine.
    return nib.aff2axcodes(affine)[2] != "I"


def _intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Grey window: SUV 0 to min(10, 99.9th percentile), so hot lesions show clearly and
    a normalised (non-SUV) image still fills the range."""
    low = min(0.0, float(np.percentile(image, 0.5)))
    high = min(10.0, float(np.percentile(image, 99.9)))
    if high <= low:
        high = float(image.max()) if image.max() > low else low + 1.0
    return low, high


def _show_slice(ax, image2d, pred2d, truth2d, aspect: float, window, superior_up: bool) -> None:
    """Show (horizontal, k) slices with k vertical and superior at the top."""
    flip = (lambda a: a.T) if superior_up else (lambda a: a.T[::-1])
    ax.imshow(flip(image2d), cmap="gray", vmin=window[0], vmax=window[1],
              origin="lower", aspect=aspect, interpolation="nearest")
    # Truth drawn wider and first, so a prediction on top of it leaves a purple rim.
    for mask, colour, width in ((truth2d, TRUTH_COLOUR, 2.4), (pred2d, PREDICTION_COLOUR, 1.2)):
        if mask.any():  # contour of an all-False slice warns and draws nothing
            _outline(ax, flip(mask), colour, width)
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax, mask2d: np.ndarray, colour: str, width: float, upsample: int = 8) -> None:
    """Outline a 2-D mask along its voxel edges: a contour of the nearest-neighbour
    upsampled mask, placed on imshow's grid (voxel centres at integers), rather than a
    contour through the voxel centres, which would cut every corner."""
    fine = np.kron(mask2d.astype(float), np.ones((upsample, upsample)))
    rows = (np.arange(fine.shape[0]) + 0.5) / upsample - 0.5
    cols = (np.arange(fine.shape[1]) + 0.5) / upsample - 0.5
    ax.contour(cols, rows, fine, levels=[0.5], colors=colour, linewidths=width)


def draw_case(axes: Sequence, image, pred, truth, spacing, affine, title: str) -> None:
    """Draw one case on two axes: the coronal (fixed j) and the sagittal (fixed i) slice where the
    prediction or the truth covers most voxels, prediction green, truth purple, superior up.

    A prediction that missed the lesion is then shown, not only the lesion it missed.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    i, j = largest_slice(pred, truth, 0), largest_slice(pred, truth, 1)
    window = _intensity_window(image)
    up = superior_is_increasing_k(affine)
    si, sj, sk = spacing
    _show_slice(axes[0], image[:, j, :], pred[:, j, :], truth[:, j, :], sk / si, window, up)
    _show_slice(axes[1], image[i, :, :], pred[i, :, :], truth[i, :, :], sk / sj, window, up)
    axes[0].set_title(f"{title} (coronal, j={j})", fontsize=9)
    axes[1].set_title(f"{title} (sagittal, i={i})", fontsize=9)


def overlay_figure(cases: Sequence[dict], title: str) -> Figure:
    """A figure with one row per case; each dict has image, pred, truth, spacing, affine, title."""
    fig = Figure(figsize=(8.0, 4.0 * len(cases)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cases), 2, squeeze=False)
    for ax_row, case in zip(axes, cases):
        draw_case(ax_row, case["image"], case["pred"], case["truth"], case["spacing"], case["affine"], case["title"])
    fig.suptitle(title, fontsize=11)
    return fig
