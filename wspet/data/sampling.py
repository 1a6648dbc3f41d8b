"""Patch sampling centred on the boxes: how training sees lesions often enough not to collapse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio


def box_sampling_weights(box: torch.Tensor, probability: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-voxel weights (same shape as ``box``) that put ``probability`` of the mass on the box.

    Among the ``valid`` voxels (all by default: those that may be a patch centre), every box
    voxel gets ``probability / n_box`` and every other voxel ``(1 - probability) / n_rest``,
    whatever the box's size; invalid voxels get 0. Without a valid box voxel (or without
    valid background) the valid voxels are weighted uniformly.
    """
    valid = torch.ones(box.shape, dtype=torch.bool) if valid is None else valid
    inside = (box > 0) & valid
    outside = ~(box > 0) & valid
    n_box, n_rest = int(inside.sum()), int(outside.sum())
    weights = valid.to(torch.float64)
    if n_box and n_rest:
        weights[inside] = probability / n_box
        weights[outside] = (1.0 - probability) / n_rest
    return weights


class BoxCentredSampler(tio.WeightedSampler):
    """A TorchIO patch sampler whose patch centres fall inside a box with ``probability``.

    With uniform sampling of 64^3 patches the network sees mostly background and the sigmoid
    saturates to an all-background prediction; box-centred patches prevent that. Only the box
    is read, never a label: weak supervision must not see the lesion masks.
    """

    def __init__(self, patch_size: Sequence[int], probability: float = 0.7, box_key: str = "box") -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"box sampling probability {probability} is not in [0, 1]")
        super().__init__(patch_size, probability_map=box_key)
        self.probability = probability

    def get_probability_map(self, subject: tio.Subject) -> torch.Tensor:
        box = subject[self.probability_map_name].data
        # Only voxels at least half a patch from the border can be centres; share the mass there.
        valid = np.ones(box.shape[1:])
        self.clear_probability_borders(valid, self.patch_size)
        return box_sampling_weights(box, self.probability, torch.from_numpy(valid > 0)[None])
