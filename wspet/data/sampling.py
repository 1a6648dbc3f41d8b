"""Patch sampling centred on the boxes: how training sees lesions often enough not to collapse.

Within the boxes' share, patch centres are spread evenly over box voxels (``per_voxel``: a box
gets patches in proportion to its volume) or over boxes (``per_box``: a 50-voxel lesion's box gets
as many as a 5,000-voxel one's), the instance balance that lesion detectors use for small lesions.

Optionally, a share of patches is centred on **hard negatives**: the hottest voxels outside every
box (normal uptake: brain, bladder, heart, kidneys in a whole-body scan), so that the network
learns that bright is not enough to be lesion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from scipy import ndimage

BOX_BALANCES = ("per_voxel", "per_box")


def box_sampling_weights(
    box: torch.Tensor,
    probability: float,
    valid: torch.Tensor | None = None,
    hot: torch.Tensor | None = None,
    hot_probability: float = 0.0,
) -> torch.Tensor:
    """Per-voxel weights (same shape as ``box``, e.g. ``(1, D, H, W)``) that put ``probability`` of the mass on the boxes.

    ``box`` is the union of the boxes (0 outside, 1 inside) or a map of box numbers (0 outside,
    ``k`` on box ``k``). Among the ``valid`` voxels (all by default: those that may be a patch
    centre), each numbered box with a valid voxel gets an equal part of ``probability``, spread
    evenly over its valid voxels (a union is one box: every box voxel gets ``probability / n_box``);
    with ``hot`` (a bool map of hard negatives), every valid hot voxel outside the boxes gets
    ``hot_probability / n_hot``; every other voxel shares what is left, whatever the sizes. Invalid
    voxels get 0. A group with no valid voxel gives its share to the others in proportion; without
    a valid box voxel and hot voxel the valid voxels are weighted uniformly.
    """
    valid = torch.ones(box.shape, dtype=torch.bool) if valid is None else valid
    inside = (box > 0) & valid
    hard = (hot & ~(box > 0) & valid) if hot is not None and hot_probability > 0 else torch.zeros_like(inside)
    rest = ~(box > 0) & ~hard & valid
    groups = [(inside, probability), (hard, hot_probability), (rest, 1.0 - probability - hot_probability)]
    present = [(mask, share) for mask, share in groups if mask.any() and share > 0]
    if all(mask is rest for mask, _ in present):
        return valid.to(torch.float64)
    total = sum(share for _, share in present)
    weights = torch.zeros(box.shape, dtype=torch.float64)
    for mask, share in present:
        part = _even_over_boxes(box[mask].long()) if mask is inside else 1.0 / int(mask.sum())
        weights[mask] = share / total * part
    return weights


def _even_over_boxes(numbers: torch.Tensor) -> torch.Tensor:
    """For the box numbers of some voxels, each voxel's part of 1 when every box gets an equal part."""
    _, index, counts = torch.unique(numbers, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[index].to(torch.float64))


def numbered_boxes(box: torch.Tensor) -> torch.Tensor:
    """The boxes of a union ``box`` ``(1, D, H, W)`` numbered 1, 2, ... by connected component (same shape).

    Overlapping or touching boxes are one component: one box for sampling.
    """
    numbers, _ = ndimage.label(box[0].numpy() > 0)
    return torch.from_numpy(numbers)[None]


class BoxCentredSampler(tio.WeightedSampler):
    """A TorchIO patch sampler whose patch centres fall inside a box with ``probability``.

    With uniform sampling of 64^3 patches the network sees mostly background and the sigmoid
    saturates to an all-background prediction; box-centred patches prevent that. Only the box
    is read, never a label: weak supervision must not see the lesion masks.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        probability: float = 0.7,
        box_key: str = "box",
        hard_negative_probability: float = 0.0,
        hard_negative_quantile: float = 0.99,
        image_key: str = "image",
        box_balance: str = "per_voxel",
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"box sampling probability {probability} is not in [0, 1]")
        if not 0.0 <= hard_negative_probability <= 1.0 - probability:
            raise ValueError(
                f"hard negative probability {hard_negative_probability} is not in [0, 1 - box probability "
                f"{probability}]"
            )
        if not 0.0 < hard_negative_quantile < 1.0:
            raise ValueError(f"hard negative quantile {hard_negative_quantile} is not in (0, 1)")
        if box_balance not in BOX_BALANCES:
            raise ValueError(f"box balance {box_balance!r} is not one of {BOX_BALANCES}")
        super().__init__(patch_size, probability_map=box_key)
        self.probability = probability
        self.hard_negative_probability = hard_negative_probability
        self.hard_negative_quantile = hard_negative_quantile
        self.image_key = image_key
        self.box_balance = box_balance

    def get_probability_map(self, subject: tio.Subject) -> torch.Tensor:
        box = subject[self.probability_map_name].data
        # Only voxels at least half a patch from the border can be centres; share the mass there.
        valid = np.ones(box.shape[1:])
        self.clear_probability_borders(valid, self.patch_size)
        valid = torch.from_numpy(valid > 0)[None]
        hot = None
        if self.hard_negative_probability > 0:
            hot = hard_negatives(subject[self.image_key].data, box, self.hard_negative_quantile)
        if self.box_balance == "per_box":
            box = numbered_boxes(box)
        return box_sampling_weights(box, self.probability, valid, hot, self.hard_negative_probability)


def hard_negatives(image: torch.Tensor, box: torch.Tensor, quantile: float) -> torch.Tensor:
    """Bool map of the voxels outside every box above the ``quantile`` of the intensities there.

    Read from the image alone (never a label): the hottest normal uptake of the volume.
    """
    outside = ~(box > 0)
    if not outside.any():
        return torch.zeros_like(outside)
    cut = float(np.quantile(image[outside].float().numpy(), quantile))
    return outside & (image > cut)
