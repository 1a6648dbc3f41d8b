"""Synthetic head-and-neck FDG-PET phantoms with lesion masks and coarse boxes.

The project's embedded default data: a stand-in for the QIN head-and-neck set
of Afshari et al. 2019 (section 4.1) that is about as hard as the real scans.
Each phantom is an activity map in SUV (body, brain, physiological hot spots,
1-12 irregular lesions) blurred by a Gaussian PSF and given Poisson-like,
slightly correlated noise. The label is the unblurred lesion support, so the
blurred boundary is genuinely ambiguous, and one coarse box per lesion has a
Dice with the label of about 0.28, as the paper's boxes.

Geometry: arrays are (I, J, K) as nibabel loads them; with the diag(spacing)
affine the axes are RAS+: i towards the patient's right (x), j anterior (y),
k superior (z). Anatomy is laid out in mm below the top slice ("depth" d), so the top
slices hold the lower brain and a shorter field of view simply shows less
neck. See docs/phantoms.md for the model, its parameters and measured figures.

CLI: ``python -m wspet.datasets.phantom OUT --cases 40 --test-cases 10 --seed 0``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from wspet.data.boxes import Box, box_dice, boxes_from_label, grow_box
from wspet.io import save_nifti, write_text
from wspet.metrics.summary import mean_std

DATASET_NAME = "wspet-phantom-hn"
GENERATOR_VERSION = 1
DEFAULT_SHAPE = (96, 96, 64)
DEFAULT_SPACING = (3.5, 3.5, 3.1)

# Tissue codes of Phantom.tissue.
AIR, BODY, BRAIN, ORGAN, SPINE, AIRWAY = 0, 1, 2, 3, 4, 5

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)

# Physiological uptake that is not lesion: (x, y, depth) centre in mm, semi-axes
# in mm, SUV range. Mirrored pairs are listed once with x > 0.
_ORGANS = (
    # name, (x, y, d), (ax, ay, ad), (suv_lo, suv_hi), paired
    ("parotid", (52.0, -8.0, 72.0), (11.0, 17.0, 20.0), (1.8, 3.5), True),
    ("pterygoid", (34.0, 4.0, 80.0), (8.0, 14.0, 16.0), (1.3, 2.4), True),
    ("nasopharynx", (0.0, 18.0, 62.0), (12.0, 7.0, 8.0), (1.6, 3.2), False),
    ("palatine_tonsil", (15.0, 8.0, 95.0), (7.0, 8.0, 12.0), (2.5, 6.5), True),
    ("lingual_tonsil", (0.0, 20.0, 106.0), (13.0, 6.0, 7.0), (2.0, 4.5), False),
    ("submandibular", (30.0, 30.0, 118.0), (10.0, 12.0, 9.0), (1.8, 3.5), True),
    ("larynx", (11.0, 22.0, 150.0), (4.0, 9.0, 7.0), (2.0, 4.5), True),
)

# Where head-and-neck cancer shows up: primaries in the pharynx, larynx and
# oral cavity (next to hot tonsils and larynx), nodes along the cervical
# chains. (x, y, depth) in mm, jitter sd in mm, relative weight, paired.
_LESION_SITES = (
    ((15.0, 8.0, 95.0), (4.0, 4.0, 8.0), 2.0, True),  # tonsil / oropharynx
    ((0.0, 22.0, 104.0), (7.0, 4.0, 6.0), 1.5, False),  # base of tongue
    ((12.0, 20.0, 145.0), (4.0, 5.0, 9.0), 1.5, True),  # larynx / hypopharynx
    ((10.0, 45.0, 102.0), (6.0, 6.0, 6.0), 1.0, True),  # oral tongue / floor of mouth
    ((0.0, 20.0, 64.0), (6.0, 4.0, 5.0), 0.6, False),  # nasopharynx
    ((38.0, 6.0, 120.0), (5.0, 8.0, 10.0), 3.0, True),  # node level II
    ((36.0, 6.0, 142.0), (5.0, 6.0, 10.0), 2.0, True),  # node level III
    ((33.0, 2.0, 165.0), (5.0, 6.0, 10.0), 1.0, True),  # node level IV
    ((26.0, 26.0, 116.0), (5.0, 5.0, 6.0), 1.0, True),  # node level Ib
    ((46.0, -24.0, 138.0), (5.0, 6.0, 15.0), 1.0, True),  # node level V
    ((52.0, -5.0, 75.0), (5.0, 5.0, 8.0), 0.5, True),  # parotid node
)


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic PET volume.

    image: (I, J, K) float32 SUV (blurred, noisy, >= 0).
    label: (I, J, K) uint8, 1 on the true (unblurred) lesion support.
    boxes: one coarse half-open box ``[i0, j0, k0, i1, j1, k1]`` per lesion,
        in ``scipy.ndimage.label`` order of the label's 26-connected components
        (one component per lesion: lesions never touch).
    spacing: voxel size in mm (i, j, k).
    tissue: (I, J, K) uint8 anatomy codes AIR, BODY, BRAIN, ORGAN, SPINE, AIRWAY
        (lesions lie on BODY/ORGAN voxels; the label says where).
    lesion_suvmax: noise-free, unblurred peak SUV of each lesion, box order.
    lesion_volume_ml: volume of each lesion in ml, box order.
    """

    image: np.ndarray
    label: np.ndarray
    boxes: list[Box]
    spacing: tuple[float, float, float]
    tissue: np.ndarray
    lesion_suvmax: tuple[float, ...]
    lesion_volume_ml: tuple[float, ...]


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axis_mm(self, a: int) -> np.ndarray:
        """Coordinate of each index along axis a: x, y centred; depth below the top slice."""
        n, s = self.shape[a], self.spacing[a]
        if a == 2:
            return ((n - 1 - np.arange(n)) * s).astype(np.float32)
        return ((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32)

    def index(self, x: float, y: float, d: float) -> np.ndarray:
        """Fractional voxel index of a point in mm (x, y, depth)."""
        i = x / self.spacing[0] + (self.shape[0] - 1) / 2.0
        j = y / self.spacing[1] + (self.shape[1] - 1) / 2.0
        k = self.shape[2] - 1 - d / self.spacing[2]
        return np.array([i, j, k])

    @property
    def depth_mm(self) -> float:
        return (self.shape[2] - 1) * self.spacing[2]


def _smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], sigma_mm: float
) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field of correlation length sigma_mm.

    Broad fields are drawn on a coarse grid and upsampled linearly: the same
    look at a fraction of the filtering cost.
    """
    sigma_vox = np.asarray([sigma_mm / s for s in spacing])
    factor = max(1, int(sigma_vox.min() // 1.5))
    coarse_shape = [math.ceil(n / factor) + 1 for n in shape]
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma_vox / factor, mode="wrap")
    if factor > 1:
        wi, wj, wk = (_linear_weights(n, factor) for n in shape)
        field = wj @ (field @ wk.T)
        field = (wi @ field.reshape(field.shape[0], -1)).reshape(len(wi), *field.shape[1:])
    field = field[: shape[0], : shape[1], : shape[2]]
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _linear_weights(n: int, factor: int) -> np.ndarray:
    """(n, ceil(n / factor) + 1) matrix that interpolates a coarse axis linearly."""
    position = np.arange(n) / factor
    left = np.floor(position).astype(int)
    frac = (position - left).astype(np.float32)
    weights = np.zeros((n, math.ceil(n / factor) + 1), dtype=np.float32)
    weights[np.arange(n), left] = 1.0 - frac
    weights[np.arange(n), left + 1] += frac
    return weights


def _ellipsoid(
    grid: _Grid, centre: Sequence[float], semi: Sequence[float]
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Normalised radius rho of an axis-aligned ellipsoid over its bounding sub-box.

    Returns (slices, rho) with rho < 1 inside, or None if it misses the volume.
    """
    lo = grid.index(centre[0] - semi[0], centre[1] - semi[1], centre[2] + semi[2])
    hi = grid.index(centre[0] + semi[0], centre[1] + semi[1], centre[2] - semi[2])
    slices = []
    for a in range(3):
        start = max(int(math.floor(min(lo[a], hi[a]))), 0)
        stop = min(int(math.ceil(max(lo[a], hi[a]))) + 1, grid.shape[a])
        if start >= stop:
            return None
        slices.append(slice(start, stop))
    x = grid.axis_mm(0)[slices[0], None, None]
    y = grid.axis_mm(1)[None, slices[1], None]
    d = grid.axis_mm(2)[None, None, slices[2]]
    rho = np.sqrt(
        ((x - centre[0]) / semi[0]) ** 2
        + ((y - centre[1]) / semi[1]) ** 2
        + ((d - centre[2]) / semi[2]) ** 2
    )
    return tuple(slices), rho  # type: ignore[return-value]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# --------------------------------------------------------------------------- anatomy


def _anatomy(grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free activity (SUV) and tissue codes of the head and neck, no lesions."""
    x = grid.axis_mm(0)[:, None, None]
    y = grid.axis_mm(1)[None, :, None]
    d = grid.axis_mm(2)[None, None, :]

    # Body outline: head ellipse above, narrower neck (set back) below, the
    # shoulders starting at the bottom of a 20 cm field of view.
    neck = _sigmoid((d - 120.0) / 8.0)
    shoulders = _sigmoid((d - 192.0) / 7.0)
    size = np.exp(rng.normal(0.0, 0.05, 2)).astype(np.float32)
    ax = (78.0 * (1 - neck) + 62.0 * neck + 120.0 * shoulders) * size[0]
    ay = (92.0 * (1 - neck) + 58.0 * neck + 20.0 * shoulders) * size[1]
    cy = -12.0 * neck
    rho = np.sqrt((x / ax) ** 2 + ((y - cy) / ay) ** 2)
    rho = rho + 0.03 * _smooth_noise(rng, grid.shape, grid.spacing, 20.0)
    body = rho < 1.0

    # Soft tissue: smooth heterogeneous SUV ~0.5-1.5, lower in subcutaneous fat.
    base = rng.uniform(0.75, 1.05)
    soft = base * (
        1.0
        + 0.18 * _smooth_noise(rng, grid.shape, grid.spacing, 18.0)
        + 0.08 * _smooth_noise(rng, grid.shape, grid.spacing, 6.0)
    )
    soft *= np.where(rho > 0.9, 0.7, 1.0)
    activity = np.where(body, np.clip(soft, 0.4, 1.6), 0.0).astype(np.float32)
    tissue = body.astype(np.uint8)  # AIR 0, BODY 1

    _add_brain(grid, rng, activity, tissue)
    _add_spine(rng, activity, tissue, x, y, d)
    for _name, centre, semi, suv, paired in _ORGANS:
        for side in (1.0, -1.0) if paired else (1.0,):
            jitter = rng.normal(0.0, 3.0, 3)
            c = (side * centre[0] + jitter[0], centre[1] + jitter[1], centre[2] + jitter[2])
            s = tuple(v * rng.uniform(0.85, 1.15) for v in semi)
            _add_blob(grid, activity, tissue, c, s, rng.uniform(*suv), ORGAN)
    _add_airway(activity, tissue, x, y, d)
    activity[~body] = 0.0
    tissue[~body] = AIR
    return activity, tissue


def _add_blob(grid: _Grid, activity, tissue, centre, semi, suv: float, code: int) -> None:
    """Soft-edged ellipsoid of uptake (plateau inside, falling at the rim), max-combined."""
    found = _ellipsoid(grid, centre, semi)
    if found is None:
        return
    slices, rho = found
    uptake = suv * np.clip(1.4 * (1.0 - rho**2), 0.0, 1.0)
    region = activity[slices]
    hot = uptake > region
    region[hot] = uptake[hot]
    tissue[slices][rho < 1.0] = code


def _add_brain(grid: _Grid, rng: np.random.Generator, activity, tissue) -> None:
    """Lower brain at the top slices (cortex hotter than white matter), cerebellum, brainstem."""
    peak = rng.uniform(6.0, 10.0)
    shift = rng.normal(0.0, 6.0)
    parts = (
        ((0.0, 5.0, -26.0 + shift), (64.0, 80.0, 66.0), 1.0),  # cerebrum
        ((0.0, -42.0, 38.0 + shift), (46.0, 28.0, 21.0), 0.8),  # cerebellum
        ((0.0, -14.0, 48.0 + shift), (12.0, 12.0, 28.0), 0.5),  # brainstem
    )
    for centre, semi, level in parts:
        found = _ellipsoid(grid, centre, semi)
        if found is None:
            continue
        slices, rho = found
        inside = rho < 1.0
        texture = _smooth_noise(rng, rho.shape, grid.spacing, 8.0)
        uptake = peak * level * np.clip(0.62 + 0.3 * rho**2 + 0.1 * texture, 0.45, 1.0)
        activity[slices][inside] = uptake[inside]
        tissue[slices][inside] = BRAIN


def _add_spine(rng: np.random.Generator, activity, tissue, x, y, d) -> None:
    """Cervical vertebral bodies (mild marrow uptake) below the skull base."""
    suv = rng.uniform(1.4, 2.3)
    phase = rng.uniform(0.0, 17.0)
    cy = -30.0 - 4.0 * _sigmoid((d - 120.0) / 10.0)
    rho = np.sqrt((x / 10.0) ** 2 + ((y - cy) / 9.0) ** 2)
    # 13 mm vertebral bodies, 4 mm discs, from C1 (depth ~68 mm) down.
    in_body = ((d - phase) % 17.0 < 13.0) & (d > 68.0)
    bone = (rho < 1.0) & (d > 68.0)
    uptake = np.where(in_body, suv, 0.6 * suv)
    activity[bone] = np.broadcast_to(uptake, bone.shape)[bone]
    tissue[bone] = SPINE


def _add_airway(activity, tissue, x, y, d) -> None:
    """Pharynx, larynx and trachea: air (no uptake) inside the neck."""
    cy = np.interp(d, [55.0, 100.0, 135.0, 150.0, 1000.0], [18.0, 10.0, 12.0, 22.0, 22.0])
    rx = np.interp(d, [55.0, 100.0, 150.0, 1000.0], [9.0, 8.0, 6.5, 8.0])
    air = (((x / rx) ** 2 + ((y - cy) / 6.0) ** 2) < 1.0) & (d > 58.0)
    activity[air] = 0.0
    tissue[air] = AIRWAY


# --------------------------------------------------------------------------- lesions


def _lesion_count(rng: np.random.Generator, max_lesions: int) -> int:
    """1 + negative binomial: mean ~3.8, sd ~2.5, as the paper's 3.8 +- 2.5 (1..12)."""
    return int(min(1 + rng.negative_binomial(2.27, 0.448), max_lesions))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _lesion_shape(
    grid: _Grid,
    rng: np.random.Generator,
    centre: np.ndarray,
    volume_ml: float,
    candidates: np.ndarray,
    crowded: np.ndarray,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Irregular lesion near ``centre`` (voxel index) of about ``volume_ml``.

    A perturbed, randomly rotated ellipsoid, sometimes with satellite lobes,
    plus a smooth random field; the top-N voxels of that field (N from the
    volume) among ``candidates`` form the lesion, so it bends around the
    brain and airway instead of overlapping them. Other lesions (``crowded``,
    their guard zones) must not take more than 10% of its ellipsoid: nodes
    may sit side by side, not wrap around each other.
    Returns (slices, mask, interior) over a local patch, interior in [0, 1]
    (1 deepest), or None if it does not fit.
    """
    spacing = np.asarray(grid.spacing)
    n_vox = max(int(round(volume_ml * 1000.0 / spacing.prod())), 4)
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    semi = radius * np.exp(rng.normal(0.0, 0.22, 3))
    semi *= radius / np.cbrt(semi.prod())
    rotation = _random_rotation(rng)

    half = np.ceil(2.6 * semi.max() / spacing).astype(int) + 2
    c = np.round(centre).astype(int)
    slices = tuple(
        slice(max(c[a] - half[a], 0), min(c[a] + half[a] + 1, grid.shape[a])) for a in range(3)
    )
    offsets = [
        (np.arange(sl.start, sl.stop) - centre[a]) * spacing[a] for a, sl in enumerate(slices)
    ]
    dx, dy, dz = np.meshgrid(*offsets, indexing="ij")
    local = np.stack([dx, dy, dz], axis=-1) @ rotation
    rho = np.sqrt(((local / semi) ** 2).sum(axis=-1))
    for _ in range(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1])):
        direction = rng.standard_normal(3)
        offset = rng.uniform(0.5, 0.9) * radius * direction / np.linalg.norm(direction)
        lobe = np.sqrt(((np.stack([dx, dy, dz], axis=-1) - offset) ** 2).sum(axis=-1))
        rho = np.minimum(rho, lobe / (rng.uniform(0.45, 0.7) * radius))
    sigma = max(3.5, rng.uniform(0.3, 0.5) * radius)
    score = 1.0 - rho + rng.uniform(0.2, 0.45) * _smooth_noise(rng, rho.shape, grid.spacing, sigma)

    if crowded[slices][rho < 1.0].mean() > 0.1:
        return None
    allowed = candidates[slices].copy()
    # Off the patch's two outer layers, so that the lesion's guard ring fits.
    allowed[[0, 1, -2, -1], :, :] = False
    allowed[:, [0, 1, -2, -1], :] = False
    allowed[:, :, [0, 1, -2, -1]] = False
    score = np.where(allowed, score, -np.inf)
    if np.count_nonzero(allowed) < n_vox:
        return None
    threshold = np.partition(score.ravel(), -n_vox)[-n_vox]
    mask = score >= threshold
    labels, n = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == 1 + int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask) & allowed
    if mask.sum() < 0.6 * n_vox:
        return None
    top = float(score[mask].max())
    interior = np.clip((score - threshold) / max(top - threshold, 1e-6), 0.0, 1.0)
    return slices, mask, interior.astype(np.float32)


def _lesion_uptake(
    rng: np.random.Generator, mask: np.ndarray, interior: np.ndarray, spacing, suvmax: float
) -> np.ndarray:
    """SUV inside a lesion: peak inside, lower rim, texture, sometimes a necrotic core.

    The maximum is exactly ``suvmax``. Zero outside ``mask``.
    """
    rim = rng.uniform(0.4, 0.85)
    profile = rim + (1.0 - rim) * interior ** rng.uniform(0.7, 1.5)
    texture = _smooth_noise(rng, mask.shape, spacing, 4.0)
    uptake = profile * np.maximum(1.0 + rng.uniform(0.05, 0.25) * texture, 0.5)
    volume = mask.sum()
    if volume * np.prod(spacing) > 4000.0 and rng.random() < 0.35:
        # Necrotic core: the deepest 10-30% of the lesion is cold, so the hot
        # part is a ring (and the peak sits just outside the core).
        cut = np.quantile(interior[mask], 1.0 - rng.uniform(0.1, 0.3))
        core = mask & (interior > cut)
        uptake = np.where(core, 0.0, uptake)
        uptake = uptake * (suvmax / uptake[mask].max())
        uptake[core] = rng.uniform(0.5, 1.5)
    else:
        uptake = uptake * (suvmax / uptake[mask].max())
    return np.where(mask, uptake, 0.0).astype(np.float32)


def _add_lesions(
    grid: _Grid,
    rng: np.random.Generator,
    activity: np.ndarray,
    tissue: np.ndarray,
    max_lesions: int,
) -> tuple[np.ndarray, list[float]]:
    """Place lesions in activity (in place); return (instance map, SUVmax per instance)."""
    body = tissue != AIR
    inner = ndimage.binary_erosion(body, iterations=2)
    brain = ndimage.binary_dilation(tissue == BRAIN, iterations=2)
    free = inner & ~brain & (tissue != SPINE) & (tissue != AIRWAY)
    if not free.any():
        fov = tuple(round(n * s) for n, s in zip(grid.shape, grid.spacing))
        raise ValueError(
            f"shape {grid.shape}: its {fov} mm field of view leaves no room for lesions"
            " outside the brain; use a larger shape or spacing"
        )

    sites = [s for s in _LESION_SITES if s[0][2] < grid.depth_mm - 5.0]
    weights = np.array([w * (2 if paired else 1) for _, _, w, paired in sites])
    crowded = np.zeros(grid.shape, dtype=bool)
    instances = np.zeros(grid.shape, dtype=np.uint8)
    suvmax: list[float] = []
    wanted = _lesion_count(rng, max_lesions)
    for attempt in range(30 * wanted):
        if len(suvmax) == wanted:
            break
        if sites and attempt < 25 * wanted:
            (x, y, d), sd, _, paired = sites[rng.choice(len(sites), p=weights / weights.sum())]
            side = rng.choice([-1.0, 1.0]) if paired else 1.0
            centre = grid.index(side * x + rng.normal(0, sd[0]), y + rng.normal(0, sd[1]),
                                d + rng.normal(0, sd[2]))
        else:  # anywhere free: a small field of view may miss every site
            options = np.argwhere(free)
            centre = options[rng.integers(len(options))].astype(float)
        c = np.round(centre).astype(int)
        if np.any(c < 0) or np.any(c >= grid.shape) or not free[tuple(c)]:
            continue
        volume_ml = math.exp(rng.uniform(math.log(0.8), math.log(16.0)))
        made = _lesion_shape(grid, rng, centre, volume_ml, free, crowded)
        if made is None:
            continue
        slices, mask, interior = made
        peak = math.exp(rng.uniform(math.log(3.5), math.log(20.0)))
        uptake = _lesion_uptake(rng, mask, interior, grid.spacing, peak)
        activity[slices][mask] = uptake[mask]
        instances[slices][mask] = len(suvmax) + 1
        # A 2-voxel guard ring keeps lesions apart: one component per lesion,
        # and a gap that the PSF blurs but does not close.
        guard = ndimage.binary_dilation(mask, structure=_FULL_CONNECTIVITY, iterations=2)
        free[slices] &= ~guard
        crowded[slices] |= guard
        suvmax.append(peak)
    if not suvmax:
        raise ValueError(f"shape {grid.shape}: could not place a single lesion")
    return instances, suvmax


def _coarse_boxes(rng: np.random.Generator, label: np.ndarray) -> list[Box]:
    """One coarse box per lesion (label (I, J, K)): its tight box scaled about the centre.

    The annotator of a case has one coarseness, scale = 1 + 0.75 * Beta(2, 3)
    (mean 1.3, range 1 to 1.75), jittered +-10% per box and axis and never
    below 1, so every box holds its whole lesion. Tuned so that the boxes'
    Dice with the label is 0.28 +- 0.10 over cases (paper: 0.28 +- 0.11).
    """
    coarseness = 1.0 + 0.75 * rng.beta(2.0, 3.0)
    boxes = []
    for tight in boxes_from_label(label):
        scale = np.maximum(coarseness * rng.uniform(0.9, 1.1, 3), 1.0)
        boxes.append(grow_box(tight, label.shape, scale=tuple(float(s) for s in scale)))
    return boxes


# --------------------------------------------------------------------------- phantom


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple, tuple]:
    shape = tuple(shape)
    spacing = tuple(spacing)
    # Anatomy is in mm: below ~24 voxels a side the volume is nearly all brain.
    if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n >= 24 for n in shape):
        raise ValueError(f"shape {shape} is not 3 ints >= 24")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} is not 3 positive numbers (mm)")
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)


def make_phantom(
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    rng: np.random.Generator,
    fwhm_mm: float = 6.0,
    noise_cov: float = 0.15,
    max_lesions: int = 12,
) -> Phantom:
    """One synthetic head-and-neck PET volume of ``shape`` (I, J, K).

    ``fwhm_mm``: Gaussian PSF applied to the activity. ``noise_cov``: noise
    std / mean at SUV 1 (variance proportional to the blurred activity, as
    Poisson counts; the noise is slightly correlated, as reconstructed PET).
    The same ``rng`` state gives identical arrays. Raises ValueError for a bad
    shape/spacing or a volume too small to hold a lesion.
    """
    shape, spacing = _check_geometry(shape, spacing)
    if not isinstance(max_lesions, (int, np.integer)) or not 1 <= max_lesions <= 255:
        raise ValueError(f"max_lesions {max_lesions!r} is not an int in 1..255")
    for name, value in (("fwhm_mm", fwhm_mm), ("noise_cov", noise_cov)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} {value!r} is not a number >= 0")
    grid = _Grid(shape, spacing)
    activity, tissue = _anatomy(grid, rng)
    instances, suvmax = _add_lesions(grid, rng, activity, tissue, max_lesions)
    label = (instances > 0).astype(np.uint8)
    boxes = _coarse_boxes(rng, label)

    sigma_vox = [fwhm_mm * _FWHM_TO_SIGMA / s for s in spacing]
    blurred = ndimage.gaussian_filter(activity, sigma_vox, mode="constant")
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.6)
    noise /= noise.std()
    image = blurred + noise_cov * np.sqrt(np.maximum(blurred, 0.0) + 1e-3) * noise
    image = np.maximum(image, 0.0).astype(np.float32)

    # Boxes follow the label's component order; map each component to its lesion.
    components, _ = ndimage.label(label, structure=_FULL_CONNECTIVITY)
    order = [
        int(instances[sl][components[sl] == n + 1][0])
        for n, sl in enumerate(ndimage.find_objects(components))
    ]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volumes = np.bincount(instances.ravel(), minlength=len(suvmax) + 1)
    return Phantom(
        image=image,
        label=label,
        boxes=boxes,
        spacing=spacing,
        tissue=tissue,
        lesion_suvmax=tuple(round(suvmax[n - 1], 3) for n in order),
        lesion_volume_ml=tuple(float(volumes[n]) * voxel_ml for n in order),
    )


# --------------------------------------------------------------------------- difficulty


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def threshold_in_box_dice(
    image: np.ndarray, label: np.ndarray, fraction: float = 0.41, margin_vox: int = 1
) -> list[float]:
    """Per-lesion Dice of the classic fixed threshold (``fraction`` of SUVmax) in a tight box.

    For each 26-connected component of ``label`` (I, J, K): its tight box grown
    by ``margin_vox`` voxels a side, voxels >= fraction * max(image in box)
    against that component. Returns ``[]`` for an empty label. The clinical
    41% method reaches ~0.85 Dice on real head-and-neck PET; a phantom meant
    to be as hard should land near 0.8.
    """
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
    components, _ = ndimage.label(label != 0, structure=_FULL_CONNECTIVITY)
    scores = []
    for n, box in enumerate(boxes_from_label(label, margin_vox=margin_vox), start=1):
        region = (slice(box[0], box[3]), slice(box[1], box[4]), slice(box[2], box[5]))
        values = image[region]
        scores.append(_dice(values >= fraction * values.max(), components[region] == n))
    return scores


def global_threshold_dice(image: np.ndarray, label: np.ndarray, threshold: float) -> float:
    """Dice of ``image >= threshold`` over the whole volume against ``label != 0``."""
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape}")
    return _dice(image >= threshold, label != 0)


# --------------------------------------------------------------------------- dataset

_SPLITS = (("training", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs"))
_CASE_FILE = re.compile(r"hn_\d{3,}\.nii\.gz")
_TMP = "."  # wspet.io writes temporaries as ".<name>.<random>"


def _save_json(data: dict, path: Path) -> None:
    text = json.dumps(data, indent=1)
    # One line per box (and per shape or spacing) keeps the file readable.
    text = re.sub(r"\[[\d\s,.eE+-]*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]",
                  text)
    write_text(path, text + "\n")


def _existing_set(out: Path) -> dict | None:
    """dataset.json of the phantom set in ``out`` ({} if unfinished), None if out is empty.

    Raises ValueError if ``out`` holds anything a phantom run would not write:
    the generator only ever overwrites its own output.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return None
    folders = {folder for _, *pair in _SPLITS for folder in pair}
    for entry in entries:
        if entry.name.startswith(_TMP) or (entry.name == "dataset.json" and entry.is_file()):
            continue
        if entry.name in folders and entry.is_dir():
            strays = [
                f.name for f in entry.iterdir()
                if not (f.is_file() and (f.name.startswith(_TMP) or _CASE_FILE.fullmatch(f.name)))
            ]
            if not strays:
                continue
            entry = entry / strays[0]
        raise ValueError(
            f"{out}: not empty and not a wspet phantom set (found {entry});"
            " refusing to overwrite it"
        )
    path = out / "dataset.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error}); refusing to overwrite {out}") from error
    name = meta.get("name") if isinstance(meta, dict) else None
    if name != DATASET_NAME:
        raise ValueError(
            f"{path}: dataset name {name!r} is not {DATASET_NAME!r}; refusing to overwrite {out}"
        )
    return meta


def _is_complete(out: Path, meta: dict, params: dict) -> bool:
    phantom = meta.get("phantom", {})
    if any(phantom.get(key) != value for key, value in params.items()):
        return False
    files = [
        entry[key] for split, *_ in _SPLITS for entry in meta.get(split, [])
        for key in ("image", "label")
    ]
    return len(files) == 2 * (params["numTraining"] + params["numTest"]) and all(
        (out / f).is_file() for f in files
    )


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 40,
    n_test: int = 10,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    fwhm_mm: float = 6.0,
    noise_cov: float = 0.15,
) -> dict:
    """Write an MSD-style phantom set (dataset.json, imagesTr/, labelsTr/, imagesTs/, labelsTs/).

    Case ``hn_{i:03d}`` (training first, then test) is drawn from child ``i``
    of ``np.random.SeedSequence(seed)``, so a case does not depend on how many
    others are made. Files are written atomically, dataset.json last, so a set
    with a dataset.json is complete, and the same arguments give the same
    dataset.json. Returns the parameters and summary figures (box Dice, 41%
    threshold Dice, global threshold Dice, lesion counts and volumes) as
    stored in dataset.json's "phantom" entry, plus ``seconds`` taken and
    ``reused`` (True when ``out_dir`` already held this very set and nothing
    was written) and ``replaced`` (True when it held a phantom set made with
    other arguments, or an unfinished one, which is now replaced). Raises ValueError for bad arguments or an ``out_dir`` that
    holds anything but a phantom set.
    """
    for name, value, low in (("n_train", n_train, 0), ("n_test", n_test, 0), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} {value!r} is not an int >= {low}")
    if n_train + n_test < 1:
        raise ValueError(f"n_train + n_test {n_train + n_test} is not >= 1")
    shape, spacing = _check_geometry(shape, spacing)
    out = Path(out_dir)
    params = {
        "generator": "wspet.datasets.phantom",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": list(shape),
        "spacing": list(spacing),
        "fwhm_mm": float(fwhm_mm),
        "noise_cov": float(noise_cov),
        "numTraining": int(n_train),
        "numTest": int(n_test),
    }
    start = time.perf_counter()
    meta = _existing_set(out)
    if meta and _is_complete(out, meta, params):
        seconds = time.perf_counter() - start
        return {**meta["phantom"], "seconds": seconds, "out_dir": str(out), "reused": True,
                "replaced": False}

    if meta is not None:
        # Mark the set unfinished before touching any case.
        (out / "dataset.json").unlink(missing_ok=True)
    for _, *folders in _SPLITS:
        for folder in folders:
            (out / folder).mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict]] = {"training": [], "test": []}
    box_dices, t41, g41, g25, counts, volumes = [], [], [], [], [], []
    children = np.random.SeedSequence(int(seed)).spawn(n_train + n_test)
    affine = np.diag([*spacing, 1.0])
    for index, child in enumerate(children):
        phantom = make_phantom(
            shape, spacing, rng=np.random.default_rng(child), fwhm_mm=fwhm_mm, noise_cov=noise_cov
        )
        split, image_dir, label_dir = _SPLITS[0] if index < n_train else _SPLITS[1]
        name = f"hn_{index:03d}.nii.gz"
        save_nifti(phantom.image, affine, out / image_dir / name)
        save_nifti(phantom.label, affine, out / label_dir / name)
        entries[split].append(
            {"image": f"{image_dir}/{name}", "label": f"{label_dir}/{name}", "boxes": phantom.boxes}
        )
        box_dices.append(box_dice(phantom.boxes, phantom.label))
        t41.extend(threshold_in_box_dice(phantom.image, phantom.label))
        g41.append(global_threshold_dice(phantom.image, phantom.label, 0.41 * phantom.image.max()))
        g25.append(global_threshold_dice(phantom.image, phantom.label, 2.5))
        counts.append(len(phantom.boxes))
        volumes.extend(phantom.lesion_volume_ml)
    _remove_strays(out, entries)

    stats = {
        "box_dice_mean": mean_std(box_dices, ddof=0)[0],
        "box_dice_std": mean_std(box_dices, ddof=0)[1],
        "threshold41_box_dice_mean": mean_std(t41, ddof=0)[0],
        "threshold41_box_dice_std": mean_std(t41, ddof=0)[1],
        "global41_dice_mean": mean_std(g41, ddof=0)[0],
        "global_suv2p5_dice_mean": mean_std(g25, ddof=0)[0],
        "lesions_per_case_mean": mean_std(counts, ddof=0)[0],
        "lesions_per_case_std": mean_std(counts, ddof=0)[1],
        "lesions_per_case_min": int(min(counts)),
        "lesions_per_case_max": int(max(counts)),
        "lesion_volume_ml_min": float(min(volumes)),
        "lesion_volume_ml_max": float(max(volumes)),
    }
    dataset = {
        "name": DATASET_NAME,
        "description": (
            "Synthetic head-and-neck FDG-PET phantoms (SUV) with lesion masks and one coarse"
            " bounding box per lesion, made by wspet.datasets.phantom; see docs/phantoms.md"
        ),
        "reference": (
            "Modelled on the QIN head-and-neck PET data of Afshari et al., Weakly supervised"
            " fully convolutional network for PET lesion segmentation, SPIE Medical Imaging 2019"
        ),
        "licence": "CC0",
        "modality": {"0": "PET"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": n_train,
        "numTest": n_test,
        "phantom": {**params, **stats},
        "training": entries["training"],
        "test": entries["test"],
    }
    _save_json(dataset, out / "dataset.json")
    seconds = time.perf_counter() - start
    return {**params, **stats, "seconds": seconds, "out_dir": str(out), "reused": False,
            "replaced": meta is not None}


def _remove_strays(out: Path, entries: dict[str, list[dict]]) -> None:
    """Delete case files of an earlier, different phantom set and leftover temp files."""
    keep = {out / e[key] for split in entries.values() for e in split for key in ("image", "label")}
    for _, *folders in _SPLITS:
        for folder in folders:
            for path in (out / folder).iterdir():
                if path not in keep:
                    path.unlink()
    for path in out.glob(_TMP + "*"):
        if path.is_file():
            path.unlink()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wspet.datasets.phantom",
        description="Write the synthetic head-and-neck PET phantom set (MSD layout) to OUT.",
    )
    parser.add_argument(
        "out", type=Path, metavar="OUT", help="output folder (empty, new, or a phantom set)"
    )
    parser.add_argument("--cases", type=int, default=40, help="training cases (default 40)")
    parser.add_argument("--test-cases", type=int, default=10, help="test cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("I", "J", "K")
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("SI", "SJ", "SK")
    )
    args = parser.parse_args(argv)
    try:
        s = write_phantom_dataset(
            args.out, args.cases, args.test_cases, args.seed, args.shape, args.spacing
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if s["reused"]:
        print(f"{args.out}: already holds this complete phantom set (seed {args.seed},"
              f" shape {tuple(args.shape)}, {args.cases}+{args.test_cases} cases); nothing written")
    else:
        replaced = " (replacing the phantom set made there with other arguments)"
        print(f"wrote {args.cases} training + {args.test_cases} test cases to {args.out}"
              + (replaced if s["replaced"] else ""))
    print(f"box/lesion Dice: {s['box_dice_mean']:.3f} +- {s['box_dice_std']:.3f}"
          " (paper's boxes: 0.28 +- 0.11)")
    print(f"lesions per case: {s['lesions_per_case_mean']:.1f} +- {s['lesions_per_case_std']:.1f}"
          f" ({s['lesions_per_case_min']}..{s['lesions_per_case_max']});"
          f" volumes {s['lesion_volume_ml_min']:.1f}..{s['lesion_volume_ml_max']:.1f} ml")
    print(f"41%-of-SUVmax in tight box Dice: {s['threshold41_box_dice_mean']:.3f}"
          f" +- {s['threshold41_box_dice_std']:.3f} per lesion (real scans: ~0.85)")
    print(f"global threshold Dice: 41% of volume SUVmax {s['global41_dice_mean']:.3f},"
          f" SUV > 2.5 {s['global_suv2p5_dice_mean']:.3f}")
    print(f"time: {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
