"""Maximum-intensity projection (MIP) pictures of a PET volume with its lesions outlined.

The volume is first turned to the closest RAS+ axis order (nibabel's ``io_orientation``, a
permutation and flips, no interpolation), so the coronal MIP is the maximum along the
anterior-posterior axis and the sagittal MIP the maximum along left-right, whatever the
file's voxel order. Both are drawn as radiologists view them: coronal from the front
(patient's right on the viewer's left), sagittal from the patient's left (anterior on the
left), superior up, in mm so the aspect follows the spacing. SUV is shown in inverted grey
(dark is hot); lesion masks are drawn as the outlines of their projections.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

from wspet.io import atomic_path

OUTLINE_COLOUR = "#e41a1c"


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` (I, J, K) reoriented to the nearest RAS+ axis order, and its spacing (mm)."""
    affine = np.asarray(affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(orientation):
        ras_spacing[int(target)] = float(spacing[axis])
    return nib.orientations.apply_orientation(array, orientation), tuple(ras_spacing)


def _check(suv: np.ndarray, mask: np.ndarray | None, affine: np.ndarray) -> None:
    if np.ndim(suv) != 3:
        raise ValueError(f"suv shape {np.shape(suv)} is not 3D (I, J, K)")
    if mask is not None and np.shape(mask) != np.shape(suv):
        raise ValueError(f"mask shape {np.shape(mask)} != suv shape {np.shape(suv)}")
    affine = np.asarray(affine)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"affine {affine.tolist()} is not an invertible finite 4x4 matrix")


def _panel(ax, image: np.ndarray, outline: np.ndarray | None, spacing: tuple[float, float],
           vmax: float, title: str) -> None:
    """Draw a (horizontal, vertical) projection with the horizontal axis reversed, superior up."""
    width, height = image.shape[0] * spacing[0], image.shape[1] * spacing[1]
    # Reversed horizontal extent puts the patient's right (coronal) / anterior (sagittal) on the left.
    extent = (width, 0.0, 0.0, height)
    ax.imshow(image.T, cmap="gray_r", vmin=0.0, vmax=vmax, origin="lower", extent=extent,
              interpolation="nearest", aspect="equal")
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


def save_mip_png(
    suv: np.ndarray,
    mask: np.ndarray | None,
    affine: np.ndarray,
    path: str | Path,
    title: str | None = None,
    vmax: float | None = None,
    dpi: int = 120,
) -> Path:
    """Write coronal and sagittal MIPs of ``suv`` (I, J, K) with ``mask``'s outlines as a PNG.

    ``affine`` maps voxels to RAS mm; ``mask`` (same shape, nonzero = lesion) may be None.
    The grey scale runs from SUV 0 (white) to ``vmax`` (black), by default the volume's SUVmax.
    Written atomically; returns ``path``. Raises ValueError for mismatched shapes or a bad affine.
    """
    _check(suv, mask, affine)
    volume, spacing = to_ras(np.asarray(suv, dtype=np.float32), affine)
    lesions = None if mask is None else to_ras(np.asarray(mask) != 0, affine)[0]
    top = float(volume.max()) if vmax is None else float(vmax)
    top = top if top > 0 else 1.0  # an all-zero volume still draws

    coronal, sagittal = volume.max(axis=1), volume.max(axis=0)  # (x, z) and (y, z)
    extents = (volume.shape[0] * spacing[0] + volume.shape[1] * spacing[1], volume.shape[2] * spacing[2])
    scale = 6.0 / max(extents)
    figure = Figure(figsize=(max(extents[0] * scale, 2.5), max(extents[1] * scale, 2.5) + (0.4 if title else 0.2)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [volume.shape[0] * spacing[0], volume.shape[1] * spacing[1]]})
    _panel(axes[0], coronal, None if lesions is None else lesions.any(axis=1),
           (spacing[0], spacing[2]), top, "coronal MIP")
    _panel(axes[1], sagittal, None if lesions is None else lesions.any(axis=0),
           (spacing[1], spacing[2]), top, "sagittal MIP")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
