"""Pseudo-labels from boxes: a lesion mask made inside each training box, with uncertain voxels marked.

A box says "the lesion is in here, and nowhere else". Inside a box, FDG uptake separates lesion
from background well enough that a classical method (a fixed fraction of the box's SUVmax, Otsu's
threshold, or a Chan-Vese level set) makes a usable label; outside every box the label is
background. Voxels whose label is uncertain are marked :data:`IGNORE` so that the loss skips them:

- voxels whose intensity lies within ``band`` (a fraction of the threshold) of the threshold;
- foreground voxels on the box's outermost layer, where a coarse box may cut through the lesion
  or through neighbouring uptake;
- with ``span_box`` and ``span_gap="ignore"``, the voxels between the method's lesion and the one
  grown to the faces of a tight box (:func:`spanning_lesion`);
- with ``ellipsoid=[inner, outer]`` (tight boxes), the voxels of the ellipsoid inscribed in the box
  scaled by ``outer`` that are not lesion; the ellipsoid scaled by ``inner`` is lesion
  (:func:`inscribed_ellipsoid`).

Inside a box the threshold may pass several connected components: the box's lesion and uptake the
box cuts (an organ's edge, a neighbouring lesion). :data:`COMPONENTS` are the two rules for which
one is the lesion: ``peak``, the component holding the box's hottest voxel (the training default),
and ``central``, the one most present in the box's central region, since a box is drawn around its
lesion. ``central`` makes the better labels (on the 40-case phantom set ``peak`` labelled 10 of the
135 training lesions mostly background, their box's hottest voxel lying in normal uptake or a
neighbouring lesion), yet models trained on them did not score higher, so training keeps ``peak``
while box prompts use ``central`` (docs/losses.md).

Arrays are ``(I, J, K)`` as nibabel loads them; boxes are half-open voxel boxes
``[i0, j0, k0, i1, j1, k1]`` (docs/dataset_format.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.segmentation import morphological_chan_vese

from wspet.data.boxes import box_region
from wspet.losses.dice_ce import IGNORE_INDEX as IGNORE

BACKGROUND, LESION = 0, 1
METHODS = ("otsu", "fraction", "chan_vese")
# How the box's lesion is chosen among the components the threshold passes (see the module's docstring).
COMPONENTS = ("central", "peak")
# Thresholds tried between a method's own and the box faces' background by ``span_box``.
SPAN_STEPS = 40
# What the voxels ``span_box`` adds to the method's lesion become: lesion, or ignored (uncertain).
SPAN_GAPS = ("lesion", "ignore")


def box_threshold(values: np.ndarray, method: str, fraction: float = 0.41) -> float:
    """The lesion/background intensity threshold inside one box (``values``: its voxels).

    ``fraction``: that share of the box's maximum (the clinical 41% of SUVmax); ``otsu``: Otsu's
    threshold of the box's histogram; ``chan_vese`` is not a threshold and is refused here.
    """
    if method == "fraction":
        return fraction * float(values.max())
    if method == "otsu":
        return float(threshold_otsu(values.ravel())) if values.min() < values.max() else float(values.max())
    raise ValueError(f"pseudo-label method {method!r} has no threshold; use one of {METHODS}")


def box_lesion(
    values: np.ndarray, method: str, fraction: float = 0.41, component: str = "peak", span_box: bool = False
) -> tuple[np.ndarray, float | None]:
    """Lesion mask inside one box, and the threshold used (``None`` for Chan-Vese).

    Only one connected component of what ``method`` finds is kept, chosen by ``component``:
    ``central`` (:func:`central_component`) or ``peak`` (the one holding the box's hottest voxel).
    A box is drawn around one lesion, and other uptake it cuts (an organ's edge) is not that lesion.
    ``span_box`` (for tight boxes, threshold methods only): see :func:`spanning_lesion`.
    """
    if method not in METHODS:
        raise ValueError(f"pseudo-label method {method!r} is not one of {METHODS}")
    if component not in COMPONENTS:
        raise ValueError(f"pseudo-label component {component!r} is not one of {COMPONENTS}")
    if not isinstance(span_box, bool):
        raise ValueError(f"pseudo-label span_box must be true or false, got {span_box!r}")
    if span_box and method == "chan_vese":
        raise ValueError("pseudo-label span_box lowers a threshold, and method 'chan_vese' has none; use otsu or fraction")
    if values.max() <= 0:
        return np.zeros(values.shape, dtype=bool), None
    keep = central_component if component == "central" else _component_at_peak
    if method == "chan_vese":
        return keep(_chan_vese(values), values), None
    threshold = box_threshold(values, method, fraction)
    if span_box:
        return spanning_lesion(values, threshold, keep)
    return keep(values >= threshold, values), threshold


def spanning_lesion(
    values: np.ndarray, threshold: float, keep: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, float]:
    """The lesion ``keep(values >= t, values)`` at the highest ``t`` from ``threshold`` down that
    reaches every face of the box (to within one voxel), and that ``t``.

    A tight box touches its lesion on all six faces, so a lesion that stops short of a face is
    smaller than the one the box was drawn around: clinicians' masks of real tumours hold necrotic
    or faintly avid tissue that a threshold of the PET leaves out (docs/losses.md). ``t`` goes down
    in :data:`SPAN_STEPS` even steps toward the median of the box's outermost layer, the background
    at its faces, and stops a step above it; if no such ``t`` reaches every face, the box is not
    tight around this lesion and the lesion at ``threshold`` is kept. On a box wider than its lesion
    the lesion may still grow into noisy background until it reaches the faces: use it for tight boxes.
    """
    lesion = keep(values >= threshold, values)
    floor = float(np.median(values[_edge_layer(values.shape)]))
    if _reaches_every_face(lesion) or floor >= threshold:
        return lesion, threshold
    for lower in np.linspace(threshold, floor, SPAN_STEPS + 1)[1:-1]:
        grown = keep(values >= lower, values)
        if _reaches_every_face(grown):
            return grown, float(lower)
    return lesion, threshold


def _reaches_every_face(mask: np.ndarray) -> bool:
    if not mask.any():
        return False
    return all(
        along.min() <= 1 and along.max() >= size - 2 for along, size in zip(np.nonzero(mask), mask.shape)
    )


def _chan_vese(values: np.ndarray) -> np.ndarray:
    scaled = (values - values.min()) / (values.max() - values.min())
    start = scaled >= threshold_otsu(scaled.ravel()) if scaled.min() < scaled.max() else scaled > 0
    mask = morphological_chan_vese(scaled, num_iter=30, init_level_set=start, smoothing=1)
    # The level set may settle on the background phase: the lesion is the hotter one.
    if mask.any() and (~mask.astype(bool)).any() and scaled[mask > 0].mean() < scaled[mask == 0].mean():
        mask = 1 - mask
    return mask.astype(bool)


def _component_at_peak(lesion: np.ndarray, values: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(lesion)
    if count <= 1:
        return lesion
    peak = np.unravel_index(np.argmax(np.where(lesion, values, -np.inf)), values.shape)
    return components == components[peak]


def central_component(lesion: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """The connected component of ``lesion`` (a box's (I, J, K) mask) with the most voxels in the
    box's central region (the middle half along each axis); if none reaches it, the component whose
    centroid is nearest the box's centre. ``values`` is not read (the signature of the other rule).

    The centre, not the hottest voxel, because a box is drawn around its lesion while the uptake
    it cuts (an organ's edge, a neighbouring lesion) lies at its faces; counting voxels rather
    than testing the centre voxel keeps a lesion whose middle is cold (a necrotic core).
    """
    components, count = ndimage.label(lesion)
    if count <= 1:
        return lesion
    ids = np.arange(1, count + 1)
    central = np.zeros(lesion.shape, dtype=bool)
    central[tuple(slice(n // 4, n - n // 4) for n in lesion.shape)] = True
    in_centre = ndimage.sum_labels(central, components, ids)
    if in_centre.max() > 0:
        return components == ids[np.argmax(in_centre)]
    centroids = np.array(ndimage.center_of_mass(lesion, components, ids))
    centre = (np.array(lesion.shape) - 1) / 2
    return components == ids[np.argmin(((centroids - centre) ** 2).sum(axis=1))]


def pseudo_label(
    image: np.ndarray,
    boxes: Sequence[Sequence[int]],
    method: str = "otsu",
    fraction: float = 0.41,
    band: float = 0.1,
    ignore_box_edge: bool = True,
    component: str = "peak",
    span_box: bool = False,
    span_gap: str = "lesion",
    fill_holes: bool = False,
    ellipsoid: Sequence[float] | None = None,
) -> np.ndarray:
    """A ``uint8`` (I, J, K) map: :data:`LESION` inside boxes where the method finds the lesion,
    :data:`IGNORE` where the label is uncertain, :data:`BACKGROUND` elsewhere.

    Args:
        image: (I, J, K) PET in SUV (or any unit proportional to it), finite.
        boxes: half-open voxel boxes inside the image.
        method: ``otsu``, ``fraction`` (of each box's maximum) or ``chan_vese``.
        fraction: the share of the box's maximum for ``fraction`` (0.41: the clinical threshold).
        band: voxels within ``band * threshold`` of the threshold are ignored (0: none).
        ignore_box_edge: ignore lesion voxels on the box's outermost voxel layer.
        component: which connected component inside a box is its lesion (:data:`COMPONENTS`;
            :func:`box_lesion`); the others are background.
        span_box: the boxes are tight: lower each box's threshold until its lesion reaches every
            face (:func:`spanning_lesion`); for ``otsu`` and ``fraction``.
        span_gap: with ``span_box``, what the voxels the spanning lesion adds to the method's own
            become: ``lesion``, or ``ignore`` (uncertain: the box says the lesion reaches its faces,
            the PET does not say where the lesion's edge lies between the two thresholds).
        fill_holes: the holes each box's lesion encloses (a cold, necrotic core) become lesion
            (:func:`wspet.postprocess.holes.without_holes`, in 3-D and in every axis-aligned plane).
        ellipsoid: ``[inner, outer]`` with ``0 < inner <= outer``, for tight boxes, or ``None``: a
            shape prior. A tight box is drawn around its lesion's extent, which uptake may not fill
            (a cold core, a contour wider than the uptake). The box's inscribed ellipsoid scaled by
            ``inner`` becomes lesion as well as the method's lesion, and the rest of the one scaled
            by ``outer`` is ignored (:func:`inscribed_ellipsoid`).

    Where boxes overlap, a voxel is lesion if any box finds it lesion, and ignored only if no box
    finds it lesion and some box finds it uncertain.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"pseudo-label fraction {fraction} is not in (0, 1]")
    if not 0.0 <= band < 1.0:
        raise ValueError(f"pseudo-label band {band} is not in [0, 1)")
    if span_gap not in SPAN_GAPS:
        raise ValueError(f"pseudo-label span_gap {span_gap!r} is not one of {SPAN_GAPS}")
    if not isinstance(fill_holes, bool):
        raise ValueError(f"pseudo-label fill_holes must be true or false, got {fill_holes!r}")
    inner, outer = _ellipsoid_scales(ellipsoid)
    # Imported here: wspet.postprocess reads this module's box_lesion for box prompts.
    from wspet.postprocess.holes import without_holes

    image = np.asarray(image, dtype=np.float32)
    lesion = np.zeros(image.shape, dtype=bool)
    uncertain = np.zeros(image.shape, dtype=bool)
    for box in boxes:
        region = box_region(box)
        values = image[region]
        found, threshold = box_lesion(values, method, fraction, component, span_box)
        doubt = np.zeros(values.shape, dtype=bool)
        if span_box and span_gap == "ignore":
            core, threshold = box_lesion(values, method, fraction, component)
            doubt |= found & ~core
            found = core
        if fill_holes:
            found = without_holes(found)
        if threshold is not None and band > 0:
            doubt |= np.abs(values - threshold) < band * abs(threshold)
        if ignore_box_edge:
            doubt |= found & _edge_layer(values.shape)
        if ellipsoid is not None:
            core = inscribed_ellipsoid(values.shape, inner)
            found |= core
            doubt = (doubt | (inscribed_ellipsoid(values.shape, outer) & ~found)) & ~core
        lesion[region] |= found & ~doubt
        uncertain[region] |= doubt
    label = np.where(lesion, LESION, np.where(uncertain, IGNORE, BACKGROUND))
    return label.astype(np.uint8)


def inscribed_ellipsoid(shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    """Boolean ``shape`` mask of the ellipsoid inscribed in a box of ``shape`` voxels, its semi-axes
    multiplied by ``scale`` (voxel centres within it; above 1 it is cut by the faces, reaching into the corners)."""
    axes = np.meshgrid(*[(np.arange(n) + 0.5) / n * 2 - 1 for n in shape], indexing="ij", sparse=True)
    return sum(axis**2 for axis in axes) <= scale**2


def _ellipsoid_scales(ellipsoid: Sequence[float] | None) -> tuple[float, float]:
    if ellipsoid is None:
        return 0.0, 0.0
    # A string iterates by character ("12" would read as [1, 2]), so it is no list of scales.
    scales = None if isinstance(ellipsoid, str) else ellipsoid
    try:
        inner, outer = (float(scale) for scale in scales)
    except (TypeError, ValueError):
        raise ValueError(f"pseudo-label ellipsoid must be [inner, outer] or null, got {ellipsoid!r}") from None
    if not 0.0 < inner <= outer:
        raise ValueError(f"pseudo-label ellipsoid [{inner}, {outer}] needs 0 < inner <= outer")
    return inner, outer


def _edge_layer(shape: tuple[int, ...]) -> np.ndarray:
    edge = np.ones(shape, dtype=bool)
    edge[tuple(slice(1, -1) if n > 2 else slice(0, 0) for n in shape)] = False
    return edge
