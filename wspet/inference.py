"""Sliding-window inference: probabilities for a whole PET volume of any size, in bounded memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torchio as tio

from wspet.data.format import Volume
from wspet.io import save_nifti
from wspet.module import LesionSegmenter

# fn(mask, image, spacing) -> mask: a step of conf/postprocess.
PostProcess = Callable[[np.ndarray, np.ndarray, tuple], np.ndarray]


def _check_window(window: Sequence[int], overlap: Sequence[int], divisor: int) -> tuple[tuple, tuple]:
    window = tuple(int(w) for w in window)
    overlap = tuple(int(o) for o in overlap)
    if len(window) != 3 or any(w <= 0 or w % divisor for w in window):
        raise ValueError(f"window {window} needs 3 positive sizes divisible by {divisor} (the U-Net's depth)")
    if len(overlap) != 3 or any(o < 0 or o % 2 or o >= w for o, w in zip(overlap, window)):
        raise ValueError(f"overlap {overlap} needs 3 even sizes, each smaller than the window {window}")
    return window, overlap


@torch.no_grad()
def predict_probabilities(
    model: LesionSegmenter,
    image: np.ndarray,
    affine: np.ndarray,
    window: Sequence[int] = (96, 96, 64),
    overlap: Sequence[int] = (32, 32, 16),
    batch_size: int = 2,
) -> np.ndarray:
    """Lesion probabilities ``(I, J, K)`` float32 for a PET volume ``(I, J, K)`` in SUV.

    The volume is z-normalised as in training, cut into overlapping ``window``-sized patches
    (padded where the volume is smaller), predicted ``batch_size`` patches at a time on the
    model's device, and blended with a Hann window so patch borders leave no seams. Memory
    grows with ``batch_size`` and the window, not with the volume.
    """
    if image.ndim != 3:
        raise ValueError(f"image shape {image.shape} is not 3D")
    window, overlap = _check_window(window, overlap, model.net.divisor)
    # Along an axis the window already covers, overlap would only add padded windows.
    overlap = tuple(0 if n <= w else o for n, w, o in zip(image.shape, window, overlap))
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(np.asarray(image, np.float32))[None], affine=affine))
    subject = tio.ZNormalization(include=["image"])(subject)
    # A volume smaller than the window is padded (with its minimum, the background) and the
    # prediction cropped back, so any size can be predicted.
    short = [max(0, w - n) for n, w in zip(image.shape, window)]
    padding = [p for s in short for p in (s // 2, s - s // 2)]
    if any(padding):
        subject = tio.Pad(padding, padding_mode="minimum")(subject)
    sampler = tio.GridSampler(subject, patch_size=window, patch_overlap=overlap, padding_mode="minimum")
    aggregator = tio.GridAggregator(sampler, overlap_mode="hann")
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch_size)
    model.eval()
    for patches in loader:
        tensor = patches["image"][tio.DATA].to(model.device)
        aggregator.add_batch(model(tensor).float().cpu(), patches[tio.LOCATION])
    probs = aggregator.get_output_tensor()[0].numpy().astype(np.float32, copy=False)
    i, j, k = (slice(padding[2 * a], padding[2 * a] + image.shape[a]) for a in range(3))
    return probs[i, j, k]


def predict_mask(
    model: LesionSegmenter,
    image: Volume,
    postprocess: PostProcess | None = None,
    window: Sequence[int] = (96, 96, 64),
    overlap: Sequence[int] = (32, 32, 16),
    threshold: float = 0.5,
    batch_size: int = 2,
) -> np.ndarray:
    """Binary lesion mask ``(I, J, K)`` for ``image``: probabilities > ``threshold``, post-processed."""
    probs = predict_probabilities(model, image.array, image.affine, window, overlap, batch_size)
    mask = probs > threshold
    if postprocess is not None:
        mask = postprocess(mask, image.array, image.spacing)
    return np.asarray(mask, dtype=bool)


def save_mask(mask: np.ndarray, image: Volume, path: str | Path) -> Path:
    """Write ``mask`` as uint8 NIfTI with the input image's affine and header, atomically."""
    header = nib.load(str(image.path)).header
    return save_nifti(mask.astype(np.uint8), image.affine, path, header)
