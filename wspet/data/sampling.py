"""Patch sampling centred on the boxes: how training sees lesions often enough not to collapse."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio


def box_sampling_weights(box: torch.Tensor, probability: float) -> torch.Tensor:
    """Per-voxel weights (same shape as ``box``) that put ``probability`` of the mass on the box.

    Every box voxel gets ``probability / n_box`` and every other voxel
    ``(1 - probability) / n_rest``, whatever the box's size; without a box (or without
    background) the weights are uniform.
    """
    inside = box > 0
    n_box = int(inside.sum())
    n_rest = inside.numel() - n_box
    weights = torch.ones(box.shape, dtype=torch.float64)
    if n_box and n_rest:
        weights[inside] = probability / n_box
        weights[~inside] = (1.0 - probability) / n_rest
    return weights


class BoxCentredSampler(tio.WeightedSampler):
    """A TorchIO patch sampler whose patch centres fall inside a box with ``probability``.

    With uniform sampling of 64^3 patches the network sees mostly background and the sigmoid
    saturates to an all-background prediction; box-centred patches prevent that. Only the box
    is read, never a label: weak supervision must not see the lesion masks. (TorchIO zeroes
    the weights within half a patch of the border, so centres there are never drawn.)
    """

    def __init__(self, patch_size: Sequence[int], probability: float = 0.7, box_key: str = "box") -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"box sampling probability {probability} is not in [0, 1]")
        super().__init__(patch_size, probability_map=box_key)
        self.probability = probability

    def get_probability_map(self, subject: tio.Subject) -> torch.Tensor:
        return box_sampling_weights(subject[self.probability_map_name].data, self.probability)
