"""Maximum-intensity projection (MIP) pictures of a PET volume with its lesions outlined.

The volume is first turned to the closest RAS+ axis order (nibabel's ``io_orientation``, a
permutation and flips, no interpolation), so the coronal MIP is the maximum along the
anterior-posterior axis and the sagittal MIP the maximum along left-right, whatever the
file's voxel order. Both are drawn as radiologists view them: coronal from the front
(patient's right on the viewer's left), sagittal from the patient's left (anterior on the
left), superior up, in mm so the aspect follows the spacing. SUV is shown in inverted grey
(dark is hot) with a colour bar; lesion masks are drawn as the outlines of their projections.
Each panel's edges carry the patient directions (R/L, A/P, S/I) read from the reoriented
affine, and a prediction with implausibly many components or volume gets a warning line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from scipy import ndimage

from wspet.io import atomic_path

log = logging.getLogger(__name__)

OUTLINE_COLOUR = "#e41a1c"
WARNING_COLOUR = "#b30000"
CMAP = "gray_r"
SUV_LABEL = "SUV (g/ml)"
# A lesion mask beyond these is more likely a failed model than a patient (the paper's lesions are a
# few to a few hundred ml; the STS model's worst case marks 42 components): say so on the picture.
MAX_COMPONENTS = 20
MAX_VOLUME_ML = 500.0
OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` (I, J, K) reoriented to the nearest RAS+ axis order, and its spacing (mm)."""
    affine = np.asarray(affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(orientation):
        ras_spacing[int(target)] = float(spacing[axis])
    return nib.orientations.apply_orientation(array, orientation), tuple(ras_spacing)


def axis_ends(affine: np.ndarray, shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    """``(low end, high end)`` patient directions of each axis of the volume :func:`to_ras` makes.

    Read from the reoriented array's own affine (nibabel's ``aff2axcodes``), so the labels drawn
    are what the affine says, not what the drawing assumes: ``[("L", "R"), ("P", "A"), ("I", "S")]``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    reoriented = affine @ nib.orientations.inv_ornt_aff(orientation, shape)
    return [(OPPOSITE[code], code) for code in nib.orientations.aff2axcodes(reoriented)]


def mask_warnings(mask: np.ndarray | None, affine: np.ndarray, max_components: int = MAX_COMPONENTS,
                  max_volume_ml: float = MAX_VOLUME_ML) -> list[str]:
    """Warnings for a mask (I, J, K) with more than ``max_components`` 26-connected components (as
    the lesion table counts them) or more than ``max_volume_ml`` in all; ``[]`` when neither."""
    if mask is None:
        return []
    lesion = np.asarray(mask) != 0
    components = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))[1]
    volume_ml = np.count_nonzero(lesion) * abs(np.linalg.det(np.asarray(affine, float)[:3, :3])) / 1000.0
    warnings = []
    if components > max_components:
        warnings.append(f"WARNING: {components} components (more than {max_components}): likely false positives")
    if volume_ml > max_volume_ml:
        warnings.append(f"WARNING: {volume_ml:.0f} ml predicted (more than {max_volume_ml:g} ml): "
                        "far beyond typical lesions")
    return warnings


def _check(suv: np.ndarray, mask: np.ndarray | None, affine: np.ndarray) -> None:
    if np.ndim(suv) != 3:
        raise ValueError(f"suv shape {np.shape(suv)} is not 3D (I, J, K)")
    if mask is not None and np.shape(mask) != np.shape(suv):
        raise ValueError(f"mask shape {np.shape(mask)} != suv shape {np.shape(suv)}")
    affine = np.asarray(affine)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"affine {affine.tolist()} is not an invertible finite 4x4 matrix")


def _panel(ax, image: np.ndarray, outline: np.ndarray | None, spacing: tuple[float, float],
           vmax: float, title: str, ends: tuple[tuple[str, str], tuple[str, str]]) -> None:
    """Draw a (horizontal, vertical) projection with the horizontal axis reversed, superior up.

    ``ends`` are the (low, high) direction labels of the horizontal and vertical axes.
    """
    width, height = image.shape[0] * spacing[0], image.shape[1] * spacing[1]
    # Voxel i lies at x = i mm-steps from 0 for the image and the outlines alike; the reversed x
    # limits below then put the patient's right (coronal) / anterior (sagittal) on the left.
    ax.imshow(image.T, cmap=CMAP, vmin=0.0, vmax=vmax, origin="lower", extent=(0.0, width, 0.0, height),
              interpolation="nearest", aspect="equal")
    (left, right), (bottom, top) = (ends[0][1], ends[0][0]), ends[1]
    for x, y, text, ha, va in ((0.02, 0.5, left, "left", "center"), (0.98, 0.5, right, "right", "center"),
                               (0.5, 0.98, top, "center", "top"), (0.5, 0.02, bottom, "center", "bottom")):
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=9, fontweight="bold", color="#1f4e9c",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    if outline is not None and outline.any():
        # A zero border closes outlines at the volume's edge, and lets contour draw 1-voxel-thin projections.
        x = (np.arange(-1, image.shape[0] + 1) + 0.5) * spacing[0]
        y = (np.arange(-1, image.shape[1] + 1) + 0.5) * spacing[1]
        ax.contour(x, y, np.pad(outline, 1).T.astype(float), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=1.2)
    ax.set_xlim(width, 0.0)
    ax.set_ylim(0.0, height)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def mip_figure(
    suv: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    title: str | None = None,
    vmax: float | None = None,
    warnings: Sequence[str] = (),
) -> Figure:
    """The figure :func:`save_mip_png` writes (arguments as there), drawn on an Agg canvas, with
    ``warnings`` (:func:`mask_warnings`) as red lines under the panels."""
    _check(suv, mask, affine)
    volume, spacing = to_ras(np.asarray(suv, dtype=np.float32), affine)
    lesions = None if mask is None else to_ras(np.asarray(mask) != 0, affine)[0]
    ends = axis_ends(affine, np.shape(suv))
    top = float(volume.max()) if vmax is None else float(vmax)
    top = top if top > 0 else 1.0  # an all-zero volume still draws

    coronal, sagittal = volume.max(axis=1), volume.max(axis=0)  # (x, z) and (y, z)
    extents = (volume.shape[0] * spacing[0] + volume.shape[1] * spacing[1], volume.shape[2] * spacing[2])
    scale = 6.0 / max(extents)
    text_height = (0.4 if title else 0.2) + 0.25 * len(warnings)
    figure = Figure(figsize=(max(extents[0] * scale, 2.5) + 1.0, max(extents[1] * scale, 2.5) + text_height),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [volume.shape[0] * spacing[0], volume.shape[1] * spacing[1]]})
    _panel(axes[0], coronal, None if lesions is None else lesions.any(axis=1),
           (spacing[0], spacing[2]), top, "coronal MIP", (ends[0], ends[2]))
    _panel(axes[1], sagittal, None if lesions is None else lesions.any(axis=0),
           (spacing[1], spacing[2]), top, "sagittal MIP", (ends[1], ends[2]))
    figure.colorbar(ScalarMappable(Normalize(0.0, top), CMAP), ax=list(axes), label=SUV_LABEL, shrink=0.8)
    if title:
        figure.suptitle(title, fontsize=10)
    if warnings:
        figure.supxlabel("\n".join(warnings), fontsize=9, fontweight="bold", color=WARNING_COLOUR)
    return figure


def save_mip_png(
    suv: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    path: str | Path,
    title: str | None = None,
    vmax: float | None = None,
    dpi: int = 120,
    max_components: int = MAX_COMPONENTS,
    max_volume_ml: float = MAX_VOLUME_ML,
) -> Path:
    """Write coronal and sagittal MIPs of ``suv`` (I, J, K) with ``mask``'s outlines as a PNG.

    ``affine`` maps voxels to RAS mm; ``mask`` (same shape, nonzero = lesion) may be None.
    The grey scale runs from SUV 0 (white) to ``vmax`` (black), by default the volume's SUVmax,
    with a colour bar in SUV. Each panel's edges are labelled with the patient directions
    (:func:`axis_ends`). A mask with more than ``max_components`` components (default 20) or
    more than ``max_volume_ml`` in all (default 500 ml) gets a red warning line under the
    panels (:func:`mask_warnings`), also logged.
    Written atomically; returns ``path``. Raises ValueError for mismatched shapes or a bad affine.
    """
    _check(suv, mask, affine)
    warnings = mask_warnings(mask, affine, max_components, max_volume_ml)
    for warning in warnings:  # the name only: a caller may draw in a staging folder
        log.warning("%s: %s", Path(path).name, warning)
    figure = mip_figure(suv, mask, affine, title, vmax, warnings)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
