"""Dice + binary cross-entropy, with voxels to ignore: nnU-Net's default loss, for labels and pseudo-labels.

``L = w_dice L_Dice + w_ce L_BCE``. ``L_Dice`` is eq. (2) per sample, or over the whole batch as
one volume (``batch_dice``, nnU-Net's choice for 3D patches); ``L_BCE`` the mean binary
cross-entropy over the voxels that count. A target voxel equal to :data:`IGNORE_INDEX` counts in
neither term: pseudo-labels mark the voxels they are unsure of that way
(:mod:`wspet.data.pseudo_labels`). Dice alone gives a tiny gradient to a voxel far from the
boundary of a large lesion; cross-entropy gives every voxel its own, which is why nnU-Net pairs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes
from wspet.losses.dice import dice_loss_per_sample

__all__ = ["IGNORE_INDEX", "DiceCELoss", "dice_ce_loss"]

# The target value of a voxel that no loss term sees.
IGNORE_INDEX = 2


def _split_ignored(target: Tensor) -> tuple[Tensor, Tensor]:
    """``(target with ignored voxels set to 0, {0, 1} mask of voxels that count)``."""
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    ignored = target == IGNORE_INDEX
    return torch.where(ignored, torch.zeros_like(target), target), (~ignored).to(torch.float32)


def _check_batch_dice(batch_dice: bool) -> bool:
    if not isinstance(batch_dice, bool):
        raise ValueError(f"batch_dice must be true or false, got {batch_dice!r}")
    return batch_dice


def _dice_ce_terms(
    probs: Tensor, target: Tensor, dice_weight: float, ce_weight: float, batch_dice: bool = False
) -> dict[str, Tensor]:
    target, counted = _split_ignored(target)
    probs, target, _ = check_volumes(probs, target)
    counted = counted.to(probs.dtype)
    kept_probs, kept_target = probs * counted, target * counted
    if batch_dice:
        # One Dice over the batch: a patch with no lesion adds its predicted voxels as false
        # positives to the shared denominator instead of a Dice term of its own.
        kept_probs, kept_target = kept_probs.reshape(1, -1), kept_target.reshape(1, -1)
    dice = dice_loss_per_sample(kept_probs, kept_target).mean()
    # binary_cross_entropy clamps log(p) at -100, so saturated probabilities stay finite.
    ce_sum = F.binary_cross_entropy(probs, target, weight=counted, reduction="sum")
    ce = ce_sum / counted.sum().clamp(min=1.0)
    return {
        "loss": dice_weight * dice + ce_weight * ce,
        "loss_dice": dice.detach(),
        "loss_ce": ce.detach(),
        "ignored_fraction": 1.0 - counted.mean().detach(),
    }


def dice_ce_loss(
    probs: Tensor, target: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False
) -> Tensor:
    """``dice_weight L_Dice + ce_weight L_BCE`` over the voxels that count, the mean over the batch.

    Args:
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        target: (B, 1, D, H, W) mask in {0, 1}, or {0, 1, :data:`IGNORE_INDEX`}.
        dice_weight, ce_weight: non-negative term weights (nnU-Net: 1 and 1).
        batch_dice: one Dice over all B samples' voxels instead of the mean of B per-sample Dice
            terms.

    Returns:
        0-dim float32 tensor (float64 if an input is float64). A sample whose counted target is
        empty gets the Dice term ``mean(p)`` over its counted voxels, as :func:`~wspet.losses.dice_loss`.
    """
    dice_weight = check_hyperparameter("dice_weight", dice_weight, 0.0)
    ce_weight = check_hyperparameter("ce_weight", ce_weight, 0.0)
    return _dice_ce_terms(probs, target, dice_weight, ce_weight, _check_batch_dice(batch_dice))["loss"]


class DiceCELoss(nn.Module):
    """Dice + cross-entropy for the Hydra ``loss`` group (``fs_dice_ce``, ``pseudo``).

    ``forward(image, probs, target)`` ignores ``image`` and returns
    ``{"loss", "loss_dice", "loss_ce", "ignored_fraction"}`` (the last three detached, for logging).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False) -> None:
        super().__init__()
        self.dice_weight = check_hyperparameter("dice_weight", dice_weight, 0.0)
        self.ce_weight = check_hyperparameter("ce_weight", ce_weight, 0.0)
        self.batch_dice = _check_batch_dice(batch_dice)

    def forward(self, image: Tensor | None, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        return _dice_ce_terms(probs, target, self.dice_weight, self.ce_weight, self.batch_dice)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, batch_dice={self.batch_dice}"
