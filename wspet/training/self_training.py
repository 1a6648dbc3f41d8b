"""Self-training: relabel the training boxes with a model's own predictions, for another round of ``loss=pseudo``.

A pseudo-label stage learns from labels made by a threshold inside each box; its network, which has
seen every box, often draws a lesion better than the threshold did. Each round predicts every
training case with the last stage's best checkpoint and writes new label maps: inside a box, lesion
where the probability is at least ``0.5 + band``, ignored (:data:`~wspet.data.pseudo_labels.IGNORE`)
within ``band`` of 0.5; background elsewhere, as outside every box. A box in which the model finds
no lesion keeps its first pseudo-label (:func:`restore_empty_boxes`): a training box holds a lesion,
and labelling it all background would teach the next stage to miss it. The next stage trains from
the last one's weights on those maps (``data.pseudo_label_dir``). Only boxes are read, never a label
(except to derive a box for a case that has none, as training does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wspet.data.boxes import box_region, boxes_to_mask
from wspet.data.format import case_boxes, load_image, load_label, read_dataset
from wspet.data.pseudo_labels import BACKGROUND, IGNORE, LESION, pseudo_label
from wspet.inference.sliding_window import predict_probabilities
from wspet.io import save_nifti
from wspet.model.module import LesionSegmenter

log = logging.getLogger(__name__)


def labels_from_probabilities(probs: np.ndarray, box: np.ndarray, band: float) -> np.ndarray:
    """``uint8`` (I, J, K) labels from probabilities ``(I, J, K)`` and the union of the boxes (bool).

    Inside a box: LESION where ``probs >= 0.5 + band``, IGNORE where ``|probs - 0.5| < band``,
    BACKGROUND otherwise; BACKGROUND outside every box.
    """
    if not 0.0 <= band < 0.5:
        raise ValueError(f"self_training.band {band} is not in [0, 0.5)")
    label = np.full(probs.shape, BACKGROUND, dtype=np.uint8)
    label[box & (np.abs(probs - 0.5) < band)] = IGNORE
    label[box & (probs >= 0.5 + band)] = LESION
    return label


def restore_empty_boxes(label: np.ndarray, image: np.ndarray, boxes: Sequence[Sequence[int]],
                        pseudo_labels: Mapping | None = None) -> tuple[np.ndarray, list[int]]:
    """``label`` (I, J, K) with each box that holds no LESION voxel relabelled by
    :func:`wspet.data.pseudo_labels.pseudo_label` of that box (``pseudo_labels``: its keyword
    arguments, e.g. ``loss.pseudo_labels``); and the indices of those boxes. The input is not modified."""
    label = label.copy()
    filled = []
    for index, box in enumerate(boxes):
        region = box_region(box)
        if not (label[region] == LESION).any():
            label[region] = pseudo_label(image, [box], **dict(pseudo_labels or {}))[region]
            filled.append(index)
    return label, filled


def relabel(
    checkpoint: Path, data_root: str | Path, out_dir: Path, band: float, window, overlap, box_margin_mm: float,
    pseudo_labels: Mapping | None = None,
) -> Path:
    """Write ``out_dir/<case>.nii.gz`` for every training case from ``checkpoint``'s predictions; return ``out_dir``.

    ``pseudo_labels``: how a box the model left empty is labelled instead (:func:`restore_empty_boxes`).
    """
    model = LesionSegmenter.from_checkpoint(checkpoint)
    for case in read_dataset(data_root).training:
        image = load_image(case.image)
        label = load_label(case.label, image) if case.boxes is None and case.label is not None else None
        boxes = case_boxes(case, image, label, margin_mm=box_margin_mm)
        probs = predict_probabilities(model, image.array, image.affine, window, overlap)
        new = labels_from_probabilities(probs, boxes_to_mask(boxes, image.array.shape) > 0, band)
        new, filled = restore_empty_boxes(new, image.array, boxes, pseudo_labels)
        save_nifti(new, image.affine, out_dir / f"{case.name}.nii.gz")
        log.info("%s: %d lesion and %d ignored voxels from %s; %d of %d boxes kept their first pseudo-label",
                 case.name, int((new == LESION).sum()), int((new == IGNORE).sum()), checkpoint, len(filled), len(boxes))
    return out_dir
