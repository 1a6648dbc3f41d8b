"""BoxInst's box-supervised loss in 3D: a projection term and a pairwise term with PET-intensity affinity.

Tian et al., BoxInst: High-Performance Instance Segmentation with Box Annotations, CVPR 2021,
eqs. (2)-(4), with the image's colour similarity replaced by PET intensity similarity:

- **projection**: projected onto each of the three axes (the maximum over the other two), the
  prediction must match the box mask. A connected lesion spans its tight box along every axis, so
  its projections are the box's; the term cannot tell where inside the box the lesion lies.
- **pairwise**: neighbouring voxels of similar intensity take the same label. For the edge
  ``(i, j)`` between face neighbours, ``P(same) = p_i p_j + (1 - p_i)(1 - p_j)`` and the affinity
  is ``exp(-|I_i - I_j| / theta)``; edges whose affinity reaches ``tau`` and that touch a box add
  ``-log P(same)``. This places the lesion's edge where the uptake changes.

``L = L_proj + pairwise_weight * L_pair``. All tensors are ``(B, 1, D, H, W)``; the image is the
network's (normalised) input, so ``theta`` is in its units (standard deviations of the volume's
intensity for the z-scored phantoms). The projection term assumes tight boxes: with a margin,
the projections of the box are larger than the lesion's, and the term pulls the prediction
towards the box.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes

__all__ = ["BoxProjectionLoss", "box_projection_loss", "pairwise_loss_per_sample", "projection_loss_per_sample"]

# Keeps log(P(same)) finite where a prediction is certain and wrong.
_LOG_FLOOR = 1e-6


def projection_loss_per_sample(probs: Tensor, box: Tensor) -> Tensor:
    """BoxInst eq. (2), summed over the three axes: Dice loss between the projections onto each axis. Returns (B,).

    Dice as BoxInst writes it, ``1 - 2 sum(p b) / (sum p^2 + sum b^2)``; a sample whose box is empty
    contributes the mean square of its projections (0 iff nothing is predicted).
    """
    total = probs.new_zeros(probs.shape[0])
    for axis in (2, 3, 4):
        others = tuple(a for a in (2, 3, 4) if a != axis)
        p = probs.amax(dim=others).flatten(1)
        b = box.amax(dim=others).flatten(1)
        denominator = (p * p).sum(1) + (b * b).sum(1)
        has_box = b.sum(1) > 0
        dice = 1 - 2 * (p * b).sum(1) / denominator.clamp_min(1e-12)
        total = total + torch.where(has_box, dice, (p * p).mean(1))
    return total


def pairwise_loss_per_sample(probs: Tensor, box: Tensor, image: Tensor, theta: float, tau: float) -> Tensor:
    """BoxInst eq. (4) over face-neighbour edges: the mean ``-log P(same)`` of the edges it counts. Returns (B,).

    An edge counts when its affinity ``exp(-|I_i - I_j| / theta)`` is at least ``tau`` and one of its
    ends is in a box; a sample with no such edge contributes 0.
    """
    total = probs.new_zeros(probs.shape[0])
    edges = probs.new_zeros(probs.shape[0])
    for axis in (2, 3, 4):
        n = probs.shape[axis]
        first = [slice(None)] * 5
        second = [slice(None)] * 5
        first[axis], second[axis] = slice(0, n - 1), slice(1, n)
        p_i, p_j = probs[tuple(first)], probs[tuple(second)]
        affinity = torch.exp(-(image[tuple(first)] - image[tuple(second)]).abs() / theta)
        counted = ((affinity >= tau) & ((box[tuple(first)] + box[tuple(second)]) > 0)).to(probs.dtype)
        same = p_i * p_j + (1 - p_i) * (1 - p_j)
        total = total + (-torch.log(same.clamp_min(_LOG_FLOOR)) * counted).flatten(1).sum(1)
        edges = edges + counted.flatten(1).sum(1)
    return torch.where(edges > 0, total / edges.clamp_min(1), torch.zeros_like(total))


def _check(pairwise_weight: float, theta: float, tau: float) -> tuple[float, float, float]:
    return (
        check_hyperparameter("pairwise_weight", pairwise_weight, 0.0),
        check_hyperparameter("theta", theta, 0.0, low_open=True),
        check_hyperparameter("tau", tau, 0.0, 1.0),
    )


def _terms(image: Tensor, probs: Tensor, box: Tensor, pairwise_weight: float, theta: float, tau: float) -> dict[str, Tensor]:
    projection = projection_loss_per_sample(probs, box).mean()
    pairwise = pairwise_loss_per_sample(probs, box, image, theta, tau).mean()
    return {"loss": projection + pairwise_weight * pairwise, "projection": projection.detach(), "pairwise": pairwise.detach()}


def box_projection_loss(
    image: Tensor, probs: Tensor, box: Tensor, pairwise_weight: float = 1.0, theta: float = 0.5, tau: float = 0.3
) -> Tensor:
    """``L_proj + pairwise_weight * L_pair``, the mean over the batch (0-dim float32, float64 for float64 input).

    Args:
        image: (B, 1, D, H, W) finite network input (normalised PET).
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        box: (B, 1, D, H, W) {0, 1} union of the training boxes.
        pairwise_weight: weight of the pairwise term (>= 0; BoxInst's 1).
        theta: intensity scale of the affinity (> 0, in the image's units).
        tau: affinity from which an edge counts, in [0, 1] (BoxInst's 0.3).
    """
    weights = _check(pairwise_weight, theta, tau)
    probs, box, image = check_volumes(probs, box, image, target_name="box")
    return _terms(image, probs, box, *weights)["loss"]


class BoxProjectionLoss(nn.Module):
    """:func:`box_projection_loss` for the Hydra ``loss`` group (``loss=boxproj``).

    ``forward(image, probs, target)`` with ``target`` the box mask returns ``{"loss", "projection",
    "pairwise"}`` (the two terms detached, for the logs).
    """

    def __init__(self, pairwise_weight: float = 1.0, theta: float = 0.5, tau: float = 0.3) -> None:
        super().__init__()
        self.pairwise_weight, self.theta, self.tau = _check(pairwise_weight, theta, tau)

    def forward(self, image: Tensor, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        probs, box, image = check_volumes(probs, target, image, target_name="box")
        return _terms(image, probs, box, self.pairwise_weight, self.theta, self.tau)

    def extra_repr(self) -> str:
        return f"pairwise_weight={self.pairwise_weight}, theta={self.theta}, tau={self.tau}"
