"""Modified Dice loss ``L_MDice``, eqs. (3)-(4) of Afshari et al. 2019.

``L_MDice = 1 - 2 sum(p b) / (sum p + sum b - M H(sum(p b) / sum b))`` with ``M = sum b - sum(p b)``
and the step ``H(x) = 1 if x > alpha else 0``. While at most ``alpha`` of the box is predicted
foreground it is the Dice loss and pulls the prediction toward the box; beyond that, box voxels
predicted background stop being penalised (``L_MS`` then shapes the inside of the box), while
voxels predicted outside the box still are.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes

__all__ = [
    "GATES", "ModifiedDiceLoss", "box_components", "box_fraction_per_sample", "modified_dice_loss",
    "modified_dice_loss_per_sample",
]

# Where eq. (3)'s step H applies: to the union of a volume's boxes (the paper), or to each box.
GATES = ("union", "per_box")


def box_fraction_per_sample(probs: Tensor, box: Tensor) -> Tensor:
    """``sum(p b) / sum b`` per sample, the quantity eq. (3)'s step compares with alpha.

    Args:
        probs, box: validated (B, 1, D, H, W) tensors.

    Returns:
        (B,) tensor, detached (the step passes no gradient); 0 for a sample with an empty box.
    """
    p = probs.detach().flatten(1)
    b = box.flatten(1)
    b_sum = b.sum(1)
    fraction = (p * b).sum(1) / b_sum.clamp_min(1)
    return torch.where(b_sum > 0, fraction, torch.zeros_like(fraction))


def box_components(box: Tensor) -> Tensor:
    """Each box of each sample as its own mask: ``(B, K, N)`` float, ``K`` the most boxes in a sample.

    Boxes are the 26-connected components of the box mask (overlapping boxes are one); samples with
    fewer boxes get empty masks. Computed on the CPU, without gradient (the mask is data).
    """
    masks = box.detach()[:, 0].cpu().numpy() > 0  # (B, D, H, W)
    labelled = [ndimage.label(m, structure=np.ones((3, 3, 3)))[0] for m in masks]
    count = max(1, max(int(labels.max()) for labels in labelled))
    parts = np.stack([np.stack([(labels == k).ravel() for k in range(1, count + 1)]) for labels in labelled])
    return torch.from_numpy(parts).to(device=box.device, dtype=box.dtype)


def modified_dice_loss_per_sample(probs: Tensor, box: Tensor, alpha: float, gate: str = "union") -> Tensor:
    """Eqs. (3)-(4) per sample on already validated tensors; see :func:`modified_dice_loss`. Returns (B,)."""
    p = probs.flatten(1)
    b = box.flatten(1)
    parts = b.unsqueeze(1) if gate == "union" else box_components(box)  # (B, K, N)
    overlap = (p.unsqueeze(1) * parts).sum(2)
    b_sum = parts.sum(2)
    has_box = b.sum(1) > 0
    # H per part, a constant for autograd; an empty part has no step and no missed voxels.
    step = (overlap.detach() / b_sum.clamp_min(1) > alpha) & (b_sum > 0)
    false_pos = (p * (1 - b)).sum(1)
    missed = ((1 - p).unsqueeze(1) * parts).sum(2)  # M = sum b - sum(p b), the soft false negatives
    # Eq. (3) rearranged exactly: with D = sum p + sum b - M H, 1 - 2 sum(pb) / D = (FP + M (1 - H)) / D,
    # and for H = 1, D = sum p + sum(p b). Both forms avoid cancellations (1 - x near 0, sum b - M),
    # and M's gradient is kept (the identity holds for every p), only H is a constant. Per box, the
    # sums over boxes of M (1 - H) and of (H sum(p b) + (1 - H) sum b) take their place.
    numerator = false_pos + torch.where(step, torch.zeros_like(missed), missed).sum(1)
    denominator = p.sum(1) + torch.where(step, overlap, b_sum).sum(1)
    # H = 1 implies sum(p b) > 0, so the denominator is positive whenever the box is non-empty.
    denominator = torch.where(has_box, denominator, torch.ones_like(denominator))
    return torch.where(has_box, numerator / denominator, p.mean(1))


def check_gate(gate: str) -> str:
    if gate not in GATES:
        raise ValueError(f"gate {gate!r} is not one of {GATES}")
    return gate


def modified_dice_loss(probs: Tensor, box: Tensor, alpha: float = 0.1, gate: str = "union") -> Tensor:
    """Modified Dice loss ``L_MDice`` (eqs. 3-4), the mean over the batch.

    Args:
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        box: (B, 1, D, H, W) {0, 1} union of the training boxes.
        alpha: step threshold in [0, 1) on the in-box fraction ``sum(p b) / sum b``.
        gate: ``union`` (the paper: one step for all of a volume's boxes) or ``per_box``.

    Returns:
        0-dim float32 tensor (float64 if an input is float64). Equal to :func:`dice_loss` while the
        in-box fraction is at most ``alpha``; ``1 - 2 sum(p b) / (sum p + sum(p b))`` above it, which
        is 0 when every predicted voxel lies inside the box. The step passes no gradient. A sample
        with an empty box contributes ``mean(p)`` (as in :func:`dice_loss`): 0 iff nothing is
        predicted, with a gradient pushing every voxel toward background. No smoothing constant.
    """
    alpha = check_hyperparameter("alpha", alpha, 0.0, 1.0, high_open=True)
    probs, box, _ = check_volumes(probs, box, target_name="box")
    return modified_dice_loss_per_sample(probs, box, alpha, check_gate(gate)).mean()


class ModifiedDiceLoss(nn.Module):
    """``L_MDice`` (eqs. 3-4) for the Hydra ``loss`` group.

    ``forward(image, probs, target)`` ignores ``image``; ``target`` is the box mask. Returns
    ``{"loss": 0-dim tensor, "box_fraction": batch mean of sum(p b)/sum b (0 for empty boxes), detached}``.
    """

    def __init__(self, alpha: float = 0.1, gate: str = "union") -> None:
        super().__init__()
        self.alpha = check_hyperparameter("alpha", alpha, 0.0, 1.0, high_open=True)
        self.gate = check_gate(gate)

    def forward(self, image: Tensor | None, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        probs, box, _ = check_volumes(probs, target, target_name="box")
        return {
            "loss": modified_dice_loss_per_sample(probs, box, self.alpha, self.gate).mean(),
            "box_fraction": box_fraction_per_sample(probs, box).mean(),
        }

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gate={self.gate}"
