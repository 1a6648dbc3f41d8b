"""Dice loss, eq. (2) of Afshari et al. 2019.

``L_Dice = 1 - 2 sum(p b) / (sum p + sum b)``, per sample, averaged over the batch. It is the
paper's ``L_FS`` when the target is the label mask and its ``L_Dice`` baseline when the target
is the union of the training boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wspet.losses.checks import check_volumes

__all__ = ["DiceLoss", "dice_loss", "dice_loss_per_sample"]


def dice_loss_per_sample(probs: Tensor, target: Tensor) -> Tensor:
    """Eq. (2) per sample on already validated tensors; see :func:`dice_loss`. Returns shape (B,)."""
    p = probs.flatten(1)
    b = target.flatten(1)
    p_sum = p.sum(1)
    b_sum = b.sum(1)
    has_target = b_sum > 0
    # 1 - 2 sum(pb) / (sum p + sum b) == (FP + FN) / (sum p + sum b): summing the soft false
    # positives and negatives directly keeps full relative precision when the loss is near 0.
    false_pos = (p * (1 - b)).sum(1)
    false_neg = ((1 - p) * b).sum(1)
    # The safe denominator keeps the unused branch of torch.where finite, so no NaN gradient leaks.
    denominator = torch.where(has_target, p_sum + b_sum, torch.ones_like(p_sum))
    dice = (false_pos + false_neg) / denominator
    return torch.where(has_target, dice, p.mean(1))


def dice_loss(probs: Tensor, target: Tensor) -> Tensor:
    """Dice loss ``1 - 2 sum(p b) / (sum p + sum b)`` (eq. 2), the mean over the batch.

    Args:
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        target: (B, 1, D, H, W) {0, 1} mask: the label (``L_FS``) or the union of the boxes (``L_Dice``).

    Returns:
        0-dim float32 tensor (float64 if an input is float64). No smoothing constant: the
        denominator is at least ``sum b >= 1`` whenever the target is non-empty. A sample with an
        empty target contributes ``mean(p)`` over its voxels instead of the constant 1 eq. (2)
        would give: it is 0 iff the prediction is empty, and its gradient ``1/N`` per voxel (an
        O(1) gradient on a shared logit bias) pushes every prediction toward background.
    """
    probs, target, _ = check_volumes(probs, target)
    return dice_loss_per_sample(probs, target).mean()


class DiceLoss(nn.Module):
    """``L_FS`` / ``L_Dice`` (eq. 2) for the Hydra ``loss`` group; no hyper-parameters.

    ``forward(image, probs, target)`` ignores ``image`` and returns ``{"loss": 0-dim tensor}``.
    """

    def forward(self, image: Tensor | None, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"loss": dice_loss(probs, target)}
