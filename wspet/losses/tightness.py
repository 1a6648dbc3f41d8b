"""Kervadec et al.'s box-tightness prior and emptiness constraint, with the log-barrier extension.

Kervadec, Dolz, Wang, Granger, Ben Ayed, *Bounding boxes for weakly supervised segmentation:
Global constraints get close to full supervision*, MIDL 2020, in 3D:

- **tightness**: every line of voxels that crosses a box along one of the three axes holds at
  least one lesion voxel, ``sum_line p >= 1`` (the paper's segments of width 1). A lesion touches
  every face of its tight box, so the prior keeps a prediction from shrinking away from the box.
- **emptiness**: no lesion outside the boxes, ``p <= 0`` for every voxel outside them.

Each constraint ``z <= 0`` becomes the log-barrier extension (Kervadec et al., *Constrained deep
networks: Lagrangian optimization via log-barrier extensions*, 2019):
``psi_t(z) = -log(-z) / t`` for ``z <= -1/t^2``, else ``t z - log(1/t^2) / t + 1/t``, a smooth
penalty that is finite everywhere. ``L = mean_lines psi_t(1 - sum_line p) + emptiness_weight *
mean_outside psi_t(p)``.

All tensors are ``(B, 1, D, H, W)``; the box is the union of a volume's boxes, so a line crossing
two boxes is one constraint (met by a lesion in either). ``t`` is fixed (the paper raises it by
10% each epoch; a fixed value keeps a resumed run exact). Nothing in these terms pulls a
prediction in from its box: it keeps what is inside free and what is outside empty.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes

__all__ = ["TightnessLoss", "log_barrier", "tightness_loss"]


def log_barrier(z: Tensor, t: float) -> Tensor:
    """The log-barrier extension ``psi_t(z)`` of the constraint ``z <= 0``, elementwise; smooth and finite."""
    inside = z <= -1.0 / t**2
    log_branch = -torch.log((-z).clamp_min(1.0 / t**2)) / t
    linear_branch = t * z - math.log(1.0 / t**2) / t + 1.0 / t
    return torch.where(inside, log_branch, linear_branch)


def tightness_terms_per_sample(probs: Tensor, box: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``(tightness, emptiness)``, each (B,): mean barrier over the lines crossing a box, and over the voxels outside.

    A sample with no box has no line (tightness 0); a sample whose box fills it has no outside (emptiness 0).
    """
    barrier_sum = probs.new_zeros(probs.shape[0])
    lines = probs.new_zeros(probs.shape[0])
    for axis in (2, 3, 4):
        crosses = box.amax(dim=axis) > 0  # the lines along this axis that cross a box
        covered = (probs * box).sum(dim=axis)
        barrier = log_barrier(1.0 - covered, t)
        barrier_sum = barrier_sum + (barrier * crosses).flatten(1).sum(1)
        lines = lines + crosses.flatten(1).sum(1)
    tightness = torch.where(lines > 0, barrier_sum / lines.clamp_min(1), torch.zeros_like(barrier_sum))
    outside = (1 - box).flatten(1)
    emptiness = (log_barrier(probs.flatten(1), t) * outside).sum(1) / outside.sum(1).clamp_min(1)
    return tightness, emptiness


def _check(emptiness_weight: float, t: float) -> tuple[float, float]:
    return check_hyperparameter("emptiness_weight", emptiness_weight, 0.0), check_hyperparameter("t", t, 0.0, low_open=True)


def _terms(probs: Tensor, box: Tensor, emptiness_weight: float, t: float) -> dict[str, Tensor]:
    tightness, emptiness = (term.mean() for term in tightness_terms_per_sample(probs, box, t))
    return {"loss": tightness + emptiness_weight * emptiness, "tightness": tightness.detach(), "emptiness": emptiness.detach()}


def tightness_loss(probs: Tensor, box: Tensor, emptiness_weight: float = 1.0, t: float = 5.0) -> Tensor:
    """Tightness prior plus ``emptiness_weight`` x emptiness, the mean over the batch (0-dim float32).

    Args:
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        box: (B, 1, D, H, W) {0, 1} union of the training boxes.
        emptiness_weight: weight of the emptiness term (>= 0).
        t: the log-barrier's sharpness (> 0; the paper starts at 5).
    """
    weights = _check(emptiness_weight, t)
    probs, box, _ = check_volumes(probs, box, target_name="box")
    return _terms(probs, box, *weights)["loss"]


class TightnessLoss(nn.Module):
    """:func:`tightness_loss` for the Hydra ``loss`` group (``loss=tightness``).

    ``forward(image, probs, target)`` ignores ``image``; ``target`` is the box mask. Returns
    ``{"loss", "tightness", "emptiness"}`` (the two terms detached, for the logs).
    """

    def __init__(self, emptiness_weight: float = 1.0, t: float = 5.0) -> None:
        super().__init__()
        self.emptiness_weight, self.t = _check(emptiness_weight, t)

    def forward(self, image: Tensor | None, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        probs, box, _ = check_volumes(probs, target, target_name="box")
        return _terms(probs, box, self.emptiness_weight, self.t)

    def extra_repr(self) -> str:
        return f"emptiness_weight={self.emptiness_weight}, t={self.t}"
