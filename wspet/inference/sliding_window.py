"""Sliding-window inference: probabilities for a whole PET volume of any size, in bounded memory.

A volume larger than the network's window (a whole-body scan of 128 x 128 x 267 voxels, a
head-and-neck scan of 168 x 168 x 545) is cut into overlapping windows, predicted
``batch_size`` windows at a time, and blended with a Gaussian importance map (nnU-Net's,
sigma = 1/8 of the window per axis): the centre of a window, where the network sees the most
context, counts most, and its borders, where it sees zero padding, count little, so window
borders leave no seams. TorchIO's ``GridAggregator`` offers only crop, average and Hann
blending, hence the small aggregator here.

Memory: the z-normalised volume, the weighted sum and the weight sum, each float32 and sized
to the volume (padded to the window where the volume is smaller), plus one batch of windows
and the network's activations for it. Nothing grows with the number of windows.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wspet.data.check import spacing_text
from wspet.data.format import Volume
from wspet.model.flips import AUTO_MIRROR, check_mirror_axes, model_mirror_axes
from wspet.model.module import LesionSegmenter
from wspet.model.orientation import model_orientation, turn_to
from wspet.model.precision import AUTO, resolve_precision

# fn(mask, image, spacing) -> mask: a step of conf/postprocess.
PostProcess = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]
# (B, 1, *window) normalised image windows -> (B, 1, *window) probabilities.
WindowFn = Callable[[torch.Tensor], torch.Tensor]

GAUSSIAN_SIGMA_FRACTION = 1 / 8  # of the window, per axis (nnU-Net's sigma_scale)
# A whole-body scan's 128 x 128 transverse slices in one window: 6 windows for STS_001's
# 128 x 128 x 267 voxels instead of 24 of 96 x 96 x 64: 3.05 s instead of 5.65 s on 2 CPU threads (docs/performance.md).
DEFAULT_WINDOW = (128, 128, 64)
DEFAULT_OVERLAP = (32, 32, 16)
SPACING_WARNING_RATIO = 1.2  # as the data check's max_spacing_ratio

log = logging.getLogger(__name__)


def mirrored(fn: WindowFn, mirror_axes: Sequence[int]) -> WindowFn:
    """``fn`` averaged over every mirroring of its ``(B, 1, I, J, K)`` input along subsets of
    ``mirror_axes`` (volume axes), each output flipped back: nnU-Net's test-time mirroring.

    ``2 ** len(mirror_axes)`` forward passes per batch; ``()`` returns ``fn`` itself. Callers pass
    the axes training flipped (``auto``, :func:`~wspet.model.flips.model_mirror_axes`): a flip the
    network never saw in training cost Dice (docs/prediction.md).
    """
    axes = check_mirror_axes(mirror_axes)
    if axes == AUTO_MIRROR:
        raise ValueError("mirrored() needs the axes themselves; model_mirror_axes resolves auto")
    if not axes:
        return fn
    flips = [[a + 2 for a in subset] for n in range(1, len(axes) + 1) for subset in itertools.combinations(axes, n)]

    def averaged(batch: torch.Tensor) -> torch.Tensor:
        total = fn(batch).float()
        for dims in flips:
            total += torch.flip(fn(torch.flip(batch, dims)).float(), dims)
        return total / (len(flips) + 1)

    return averaged


def check_window(window: Sequence[int], overlap: Sequence[int], divisor: int = 1) -> tuple[tuple, tuple]:
    """``(window, overlap)`` as int tuples; ValueError unless 3 sizes, windows divisible by ``divisor``."""
    window = tuple(int(w) for w in window)
    overlap = tuple(int(o) for o in overlap)
    if len(window) != 3 or any(w <= 0 or w % divisor for w in window):
        raise ValueError(f"window {window} needs 3 positive sizes divisible by {divisor} (the U-Net's depth)")
    if len(overlap) != 3 or any(o < 0 or o >= w for o, w in zip(overlap, window)):
        raise ValueError(f"overlap {overlap} needs 3 sizes >= 0, each smaller than the window {window}")
    return window, overlap


def fit_window(window: Sequence[int], overlap: Sequence[int], shape: Sequence[int], divisor: int = 1) -> tuple[tuple, tuple]:
    """``(window, overlap)`` with each window size cut to the volume's ``shape`` rounded up to ``divisor``.

    A volume smaller than the window along an axis is then padded only to the next multiple of
    ``divisor`` (the U-Net's depth), not to the whole window: a 96 x 96 x 64 phantom in a
    128 x 128 x 64 window runs as one 96 x 96 x 64 window, not a padded 128 x 128 x 64 one. An
    overlap is cut below its window (it matters only where several windows cover an axis).
    """
    fitted = tuple(min(int(w), -(-int(n) // divisor) * divisor) for w, n in zip(window, shape))
    return fitted, tuple(min(int(o), f - 1) for o, f in zip(overlap, fitted))


def window_starts(size: int, window: int, overlap: int) -> list[int]:
    """First voxel of each window along an axis of ``size`` voxels (``size >= window``).

    The fewest windows whose neighbours overlap by at least ``overlap`` voxels, spread evenly
    from 0 to ``size - window`` (the last window ends at the volume's end; none sticks out).
    ``size <= window`` gives ``[0]``.
    """
    if size <= window:
        return [0]
    count = -(-(size - window) // (window - overlap)) + 1  # ceil division
    return [int(s) for s in np.linspace(0, size - window, count).round()]


def gaussian_importance(window: Sequence[int], sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION) -> np.ndarray:
    """Blending weights ``window`` float32: a Gaussian centred on the window, 1 at its peak.

    Separable, sigma = ``sigma_fraction`` x the window along each axis. The borders get little
    weight (exp(-8) ~ 3e-4 per axis with sigma 1/8 of the window) but never zero, so every
    voxel of a volume covered by windows has a positive weight sum.
    """
    profiles = []
    for size in window:
        offset = np.arange(size) - (size - 1) / 2
        profile = np.exp(-0.5 * (offset / (size * sigma_fraction)) ** 2)
        profiles.append(profile / profile.max())
    return np.einsum("i,j,k->ijk", *profiles).astype(np.float32)


def _pad_to_window(volume: np.ndarray, window: tuple) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``volume`` padded (centred, with its minimum: the background) to at least ``window``, and
    the slices that crop the padded array back to the volume."""
    short = [max(0, w - n) for n, w in zip(volume.shape, window)]
    if not any(short):
        return volume, tuple(slice(None) for _ in volume.shape)
    widths = [(s // 2, s - s // 2) for s in short]
    padded = np.pad(volume, widths, mode="constant", constant_values=volume.min())
    return padded, tuple(slice(before, before + n) for (before, _), n in zip(widths, volume.shape))


def sliding_window(
    fn: WindowFn,
    volume: np.ndarray,
    window: Sequence[int],
    overlap: Sequence[int],
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """``fn`` over a volume ``(I, J, K)`` of any size, window by window, Gaussian-blended.

    Windows are ``window``-sized, neighbours overlapping by at least ``overlap`` voxels
    (:func:`window_starts`); a volume smaller than the window along an axis is padded with its
    minimum and the result cropped back. ``fn`` gets ``(B, 1, *window)`` float32 batches of at
    most ``batch_size`` windows on ``device`` and must return the same shape; each output voxel
    is the :func:`gaussian_importance`-weighted mean of the windows covering it.
    Returns float32 ``(I, J, K)``. Raises ValueError for a bad window, overlap or batch size,
    an output of another shape, or non-finite outputs. ``progress`` shows a tqdm bar of the
    windows on stderr (a whole-body scan takes a minute on a CPU); nested in another bar, it is
    cleared when done.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume shape {volume.shape} is not 3D (I, J, K)")
    window, overlap = check_window(window, overlap)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size {batch_size} is not >= 1")
    padded, crop = _pad_to_window(np.asarray(volume, dtype=np.float32), window)
    # Corners are generated lazily, batch by batch: not even their list grows with the volume.
    starts = [window_starts(n, w, o) for n, w, o in zip(padded.shape, window, overlap)]
    corners = itertools.product(*starts)
    weights = gaussian_importance(window)
    weighted = np.zeros(padded.shape, np.float32)
    total = np.zeros(padded.shape, np.float32)
    bar = tqdm(total=math.prod(len(s) for s in starts), desc="windows", unit="window", disable=not progress, leave=None)
    with bar:
        while batch_corners := list(itertools.islice(corners, int(batch_size))):
            regions = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in batch_corners]
            batch = torch.from_numpy(np.stack([padded[r] for r in regions])[:, None]).to(device)
            result = fn(batch)
            if tuple(result.shape) != tuple(batch.shape):
                raise ValueError(f"model output shape {tuple(result.shape)} != window batch shape {tuple(batch.shape)}")
            for region, probs in zip(regions, result.detach().float().cpu().numpy()[:, 0]):
                weighted[region] += probs * weights
                total[region] += weights
            bar.update(len(regions))
    weighted /= total
    bad = int(np.count_nonzero(~np.isfinite(weighted)))
    if bad:
        raise ValueError(f"model output has {bad} NaN or inf voxels in a volume of shape {volume.shape}")
    return np.ascontiguousarray(weighted[crop])


@torch.no_grad()
def predict_probabilities(
    model: LesionSegmenter,
    image: np.ndarray,
    affine: np.ndarray | None = None,
    window: Sequence[int] = DEFAULT_WINDOW,
    overlap: Sequence[int] = DEFAULT_OVERLAP,
    batch_size: int = 2,
    precision: str = AUTO,
    progress: bool = False,
    mirror_axes: str | Sequence[int] = (),
) -> np.ndarray:
    """Lesion probabilities ``(I, J, K)`` float32 for a PET volume ``(I, J, K)`` in SUV.

    The volume is prepared as in training (``model.preprocessing``: resampled to the training
    spacing when the model was trained at one, then normalised), predicted by
    :func:`sliding_window` in windows cut to the volume (:func:`fit_window`) on the model's device
    (CPU or GPU), ``batch_size`` windows per forward pass, and the probabilities resampled back to
    the volume's own grid. Memory grows with the window and ``batch_size`` (activations) and with the volume (a few float32
    copies), not with the number of windows. ``affine`` (voxel to world, mm) is needed only by
    a model trained at a target spacing; ValueError if it is then missing. A volume whose axis
    order differs from the training volumes' (``training_orientation``) is turned to it first
    and its probabilities turned back (:mod:`wspet.model.orientation`); ``window``, ``overlap``
    and ``mirror_axes`` are then axes of the turned volume, as in training.

    ``precision`` is resolved as the trainer's (:func:`wspet.model.precision.resolve_precision`): with
    ``auto``, the network runs under bf16 autocast on CPUs with AVX512-BF16 or AMX and on GPUs
    with bf16, in float32 elsewhere; the probabilities and their blending stay float32.
    ``progress``: a bar of the windows (:func:`sliding_window`). ``mirror_axes``: test-time
    mirroring along these volume axes, or ``auto`` along the model's training flips
    (:func:`model_mirror_axes`, :func:`mirrored`), ``2 ** len(axes)`` times the cost.
    """
    if image.ndim != 3:
        raise ValueError(f"image shape {image.shape} is not 3D")
    turn = turn_to(affine, model_orientation(model))
    if turn is not None:  # its probabilities computed in the training orientation, returned on its own grid
        turned, turned_affine = turn.apply(image, affine)
        return turn.undo(predict_probabilities(model, turned, turned_affine, window, overlap, batch_size,
                                               precision, progress, mirror_axes))
    check_window(window, overlap, model.net.divisor)
    mirror_axes = model_mirror_axes(model, mirror_axes)
    model.eval()
    prepare = model.preprocessing
    network_image, network_affine = prepare.to_network_grid(image, affine)
    window, overlap = fit_window(window, overlap, network_image.shape, model.net.divisor)
    device = model.device.type
    choice = resolve_precision(precision, device)
    log.debug("prediction precision %s on %s: %s, because %s", precision, device, choice.precision, choice.reason)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=choice.autocast_dtype, enabled=choice.autocast_dtype is not None):
            return model(batch)

    probs = sliding_window(mirrored(forward, mirror_axes), prepare.normalise(network_image), window, overlap,
                           batch_size, model.device, progress=progress)
    return prepare.to_native_grid(probs, network_affine, image.shape, affine)


def log_turn(model: LesionSegmenter, image: Volume) -> bool:
    """True (and a logged note) when ``image`` is turned to the axis order ``model`` was trained in."""
    turn = turn_to(image.affine, model_orientation(model))
    if turn is not None:
        log.info("%s: voxel axes %s, the model's training volumes %s: predicted in their axis order, the mask put "
                 "back on the scan's own grid", image.path, "".join(turn.source), "".join(turn.target))
    return turn is not None


def warn_if_spacing_differs(model: LesionSegmenter, image: Volume) -> bool:
    """True (and a logged warning) when the network would see voxels of another size than in training."""
    trained = model.hparams.get("training_spacing")
    if trained is None or model.preprocessing.target_spacing is not None:
        return False  # unknown, or resampled to the training spacing anyway
    turn = turn_to(image.affine, model_orientation(model))
    spacing = image.spacing if turn is None else turn.spacing(image.spacing)  # as the network will see it
    ratios = np.maximum(np.divide(spacing, trained), np.divide(trained, spacing))
    if not np.any(ratios > SPACING_WARNING_RATIO):
        return False
    log.warning(
        "%s: spacing %s mm is %.2fx off the %s mm the model was trained on; lesions will look %s to it. "
        "Resample the scan, or train with data.target_spacing set (docs/training.md)",
        image.path, spacing_text(spacing), float(ratios.max()), spacing_text(trained),
        "larger" if np.prod(spacing) < np.prod(trained) else "smaller",
    )
    return True


def check_threshold(threshold: object) -> float:
    """``threshold`` as a float; ValueError unless it is a probability in [0, 1] (NaN, 1.5 or -0.2
    would give an empty or a full mask without a word)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold!r} is not a probability in [0, 1]")
    return float(threshold)


def predict_mask(
    model: LesionSegmenter | Sequence[LesionSegmenter],
    image: Volume,
    postprocess: PostProcess | None = None,
    window: Sequence[int] = DEFAULT_WINDOW,
    overlap: Sequence[int] = DEFAULT_OVERLAP,
    threshold: float = 0.5,
    batch_size: int = 2,
    progress: bool = False,
    mirror_axes: str | Sequence[int] = (),
) -> np.ndarray:
    """Binary lesion mask ``(I, J, K)`` for ``image``: probabilities > ``threshold``, post-processed.

    ``model`` may be several models (an ensemble, as nnU-Net's folds): their probabilities, each
    prepared and resampled back by its own model's preprocessing, are averaged before the
    threshold. Memory holds one extra float32 volume for the running sum, whatever their number.

    Logs a warning naming the file when a model works at native spacing and ``image``'s spacing
    is off the training volumes' median by more than :data:`SPACING_WARNING_RATIO` on an axis.
    ``progress``: a bar of the windows (:func:`sliding_window`); ``mirror_axes``: test-time
    mirroring (:func:`mirrored`).
    """
    models = [model] if isinstance(model, LesionSegmenter) else list(model)
    if not models:
        raise ValueError("no model to predict with")
    threshold = check_threshold(threshold)
    probs = None
    for member in models:
        log_turn(member, image)
        warn_if_spacing_differs(member, image)
        member_probs = predict_probabilities(member, image.array, image.affine, window, overlap, batch_size,
                                             progress=progress, mirror_axes=mirror_axes)
        probs = member_probs if probs is None else np.add(probs, member_probs, out=probs)
    mask = probs > threshold * len(models)
    del probs
    if postprocess is not None:
        mask = postprocess(mask, image.array, image.spacing)
    return np.asarray(mask, dtype=bool)
