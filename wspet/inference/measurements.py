"""Per-lesion PET measurements: MTV, SUVmax, SUVmean, SUVpeak, TLG, centroid and box.

A lesion is a 26-connected component of the mask (as in :mod:`wspet.metrics.lesions`).
Definitions (``docs/real_data.md``):

- ``volume_ml`` (metabolic tumour volume, MTV): voxel count x voxel volume, the voxel volume
  being ``|det|`` of the affine's 3x3 part (mm^3), / 1000.
- ``suv_max`` / ``suv_mean``: over the lesion's voxels.
- ``suv_peak``: mean SUV over every voxel of the image (lesion or not) whose centre lies within
  6.2 mm (a 1 ml sphere) of the centre of the lesion's hottest voxel, the sphere clipped to the
  image. This is the common "sphere on the hottest voxel" simplification of PERCIST's SUVpeak,
  not PERCIST's search over all sphere positions. Ties for the hottest voxel go to the first
  in C order.
- ``tlg`` (total lesion glycolysis): ``suv_mean * volume_ml``.
- ``centroid_{x,y,z}_mm``: the unweighted mean of the lesion's voxel centres, through the
  affine (nibabel's RAS+ world, mm).
- ``i0 .. k1``: the lesion's bounding box, voxel indices, half-open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from wspet.io import write_csv
from wspet.metrics.lesions import label_components

SUV_PEAK_RADIUS_MM = 6.2  # (4/3) pi 6.2^3 = 998 mm^3, about 1 ml
LESION_COLUMNS = (
    "lesion", "n_voxels", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "peak_i", "peak_j", "peak_k", "i0", "j0", "k0", "i1", "j1", "k1",
)


def _check_inputs(mask: np.ndarray, suv: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask, suv, affine = np.asarray(mask), np.asarray(suv, dtype=np.float64), np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3 or mask.shape != suv.shape:
        raise ValueError(f"mask shape {mask.shape} != suv shape {suv.shape} (both must be 3D (I, J, K))")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine {affine.tolist()} is not a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"affine {affine.tolist()} is singular")
    bad = int(np.count_nonzero(~np.isfinite(suv)))
    if bad:
        raise ValueError(f"suv has {bad} NaN or inf voxels")
    return mask != 0, suv, affine


def sphere_offsets(affine: np.ndarray, radius_mm: float = SUV_PEAK_RADIUS_MM) -> np.ndarray:
    """Integer voxel offsets ``(N, 3)`` whose world displacement is at most ``radius_mm``.

    Works for any (anisotropic, sheared or rotated) affine: for a displacement ``w`` with
    ``|w| <= r`` the voxel offset ``d = L^-1 w`` has ``|d_a| <= r * |row a of L^-1|``.
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    reach = np.ceil(radius_mm * np.linalg.norm(np.linalg.inv(linear), axis=1)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1).reshape(-1, 3)
    distance = np.linalg.norm(grid @ linear.T, axis=1)
    return grid[distance <= radius_mm * (1 + 1e-9)]


def _peak_means(suv: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Mean of ``suv`` over ``centres[n] + offsets`` inside the image, for each centre ``(N, 3)``."""
    points = centres[:, None, :] + offsets[None, :, :]  # (N lesions, M offsets, 3)
    inside = np.all((points >= 0) & (points < np.array(suv.shape)), axis=-1)
    values = suv[tuple(np.clip(points, 0, np.array(suv.shape) - 1).transpose(2, 0, 1))]
    return np.where(inside, values, 0.0).sum(axis=1) / inside.sum(axis=1)


def lesion_table(mask: np.ndarray, suv: np.ndarray, affine: np.ndarray) -> list[dict]:
    """One row per 26-connected lesion of ``mask`` (shape (I, J, K), nonzero = lesion).

    ``suv`` has the mask's shape; ``affine`` maps voxel indices to RAS mm. Rows hold the
    :data:`LESION_COLUMNS` (see the module docstring), lesions numbered from 1 in
    ``scipy.ndimage.label`` order (first voxel in C order). An empty mask gives ``[]``.
    Raises ValueError for mismatched shapes, a bad affine or non-finite SUVs.
    """
    lesions, suv, affine = _check_inputs(mask, suv, affine)
    labels, count = label_components(lesions)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    n_voxels = ndimage.sum_labels(np.ones_like(suv), labels, index)
    suv_max = ndimage.maximum(suv, labels, index)
    suv_mean = ndimage.mean(suv, labels, index)
    hottest = np.array(ndimage.maximum_position(suv, labels, index), dtype=int).reshape(count, 3)
    suv_peak = _peak_means(suv, hottest, sphere_offsets(affine))
    centres = np.array(ndimage.center_of_mass(lesions, labels, index), dtype=np.float64).reshape(count, 3)
    world = centres @ affine[:3, :3].T + affine[:3, 3]
    boxes = ndimage.find_objects(labels)
    rows = []
    for n in range(count):
        volume = float(n_voxels[n]) * voxel_ml
        box = boxes[n]
        rows.append({
            "lesion": n + 1,
            "n_voxels": int(n_voxels[n]),
            "volume_ml": volume,
            "suv_max": float(suv_max[n]),
            "suv_mean": float(suv_mean[n]),
            "suv_peak": float(suv_peak[n]),
            "tlg": float(suv_mean[n]) * volume,
            "centroid_x_mm": float(world[n, 0]),
            "centroid_y_mm": float(world[n, 1]),
            "centroid_z_mm": float(world[n, 2]),
            "peak_i": int(hottest[n, 0]), "peak_j": int(hottest[n, 1]), "peak_k": int(hottest[n, 2]),
            "i0": box[0].start, "j0": box[1].start, "k0": box[2].start,
            "i1": box[0].stop, "j1": box[1].stop, "k1": box[2].stop,
        })
    return rows


def write_lesion_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write lesion rows atomically as CSV.

    Columns: any keys the caller added (e.g. ``case``), in the first row's order, then
    :data:`LESION_COLUMNS`. No rows writes the header alone. Floats keep full precision.
    """
    extra = [key for key in (rows[0] if rows else {}) if key not in LESION_COLUMNS]
    missing = sorted({key for row in rows for key in LESION_COLUMNS if key not in row})
    if missing:
        raise ValueError(f"{path}: rows lack columns {missing}")
    return write_csv(path, rows, columns=[*extra, *LESION_COLUMNS])


def describe(row: dict) -> str:
    """One line for a lesion row, for logs."""
    return (f"lesion {row['lesion']}: {row['volume_ml']:.2f} ml, SUVmax {row['suv_max']:.2f}, "
            f"SUVmean {row['suv_mean']:.2f}, SUVpeak {row['suv_peak']:.2f}, TLG {row['tlg']:.1f}")
