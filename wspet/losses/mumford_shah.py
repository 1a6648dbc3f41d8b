"""Mumford-Shah inspired loss ``L_MS``, eqs. (5)-(7) of Afshari et al. 2019.

Inside the box, the prediction is read as a level set ``phi = p - 0.5`` and the image is asked to
be piecewise constant on either side of its zero level: ``C1`` and ``C2`` are the mean
intensities inside and outside the predicted lesion (eq. 7) and eq. (5) compares each voxel with
them, normalised by the box volume so that boxes of any size weigh alike.

``data_term="chan_vese"`` replaces eq. (5)'s absolute differences by Chan and Vese's squared data
term, ``(w1 sum (I - C1)^2 He b + w2 sum (I - C2)^2 (1 - He) b) / sum b``: never negative, and
least when the two sides of the level set are each of one intensity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes

__all__ = ["DATA_TERMS", "MumfordShahLoss", "mumford_shah_loss", "mumford_shah_loss_per_sample", "regularised_heaviside"]

# Eq. (5) as the paper writes it, or Chan and Vese's squared data term.
DATA_TERMS = ("paper", "chan_vese")


def regularised_heaviside(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Chan-Vese regularised Heaviside ``He(x) = 0.5 (1 + 2/pi atan(x / eps))`` (eq. 6) and ``1 - He(x)``.

    Evaluated as ``atan2(eps, -x) / pi`` and ``atan2(eps, x) / pi``, equal to the formula but
    free of the cancellation ``0.5 - 0.5`` suffers for small eps, so both stay strictly positive.

    Returns:
        ``(He(x), 1 - He(x))``, each shaped like ``x``.
    """
    e = torch.full_like(x, eps)
    return torch.atan2(e, -x) / math.pi, torch.atan2(e, x) / math.pi


def _safe_denominator(total: Tensor, has_box: Tensor) -> Tensor:
    """``total`` where the box is non-empty, else 1, so that no 0 / 0 (or its NaN gradient) arises.

    ``He`` and ``1 - He`` are strictly positive, so a non-empty box gives a positive total; the
    clamp to the dtype's smallest normal number only guards underflow for an absurdly small eps.
    """
    total = torch.where(has_box, total, torch.ones_like(total))
    return total.clamp_min(torch.finfo(total.dtype).tiny)


def mumford_shah_loss_per_sample(
    image: Tensor, probs: Tensor, box: Tensor, w1: float, w2: float, eps: float, data_term: str = "paper"
) -> Tensor:
    """Eqs. (5)-(7) per sample on already validated tensors; see :func:`mumford_shah_loss`. Returns (B,)."""
    inside, outside = regularised_heaviside(probs.flatten(1) - 0.5, eps)
    i = image.flatten(1)
    b = box.flatten(1)
    b_sum = b.sum(1)
    has_box = b_sum > 0
    c1 = ((i * inside * b).sum(1) / _safe_denominator((inside * b).sum(1), has_box)).unsqueeze(1)
    c2 = ((i * outside * b).sum(1) / _safe_denominator((outside * b).sum(1), has_box)).unsqueeze(1)
    if data_term == "chan_vese":
        term1 = ((i - c1) ** 2 * inside * b).sum(1)
        term2 = ((i - c2) ** 2 * outside * b).sum(1)
    else:
        fg = i * inside
        bg = i * outside
        term1 = (((fg - c1).abs() - (fg - c2).abs()) * b).sum(1)
        term2 = (((bg - c2).abs() - (bg - c1).abs()) * b).sum(1)
    loss = (w1 * term1 + w2 * term2) / b_sum.clamp_min(1)
    return torch.where(has_box, loss, torch.zeros_like(loss))


def _check_ms_hyperparameters(w1: float, w2: float, eps: float) -> tuple[float, float, float]:
    return (
        check_hyperparameter("w1", w1, 0.0),
        check_hyperparameter("w2", w2, 0.0),
        check_hyperparameter("eps", eps, 0.0, low_open=True),
    )


def check_data_term(data_term: str) -> str:
    if data_term not in DATA_TERMS:
        raise ValueError(f"data_term {data_term!r} is not one of {DATA_TERMS}")
    return data_term


def mumford_shah_loss(
    image: Tensor, probs: Tensor, box: Tensor, w1: float = 1.0, w2: float = 3.0, eps: float = 0.03,
    data_term: str = "paper",
) -> Tensor:
    """Mumford-Shah inspired loss ``L_MS`` (eqs. 5-7), the mean over the batch.

    With ``phi = p - 0.5``, ``He`` the regularised Heaviside (eq. 6),
    ``C1 = sum(I He b) / sum(He b)`` and ``C2 = sum(I (1 - He) b) / sum((1 - He) b)`` (eq. 7, with
    ``He`` in place of the sharp step, as Chan and Vese do; gradients flow through C1 and C2)::

        L_MS = (w1 sum((|I He - C1| - |I He - C2|) b) + w2 sum((|I (1-He) - C2| - |I (1-He) - C1|) b)) / sum b

    Args:
        image: (B, 1, D, H, W) the network's normalised input.
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        box: (B, 1, D, H, W) {0, 1} union of the training boxes.
        w1, w2: non-negative weights of the two terms. eps: Heaviside width, > 0.
        data_term: ``paper`` (eq. 5) or ``chan_vese`` (the squared data term, see the module).

    Returns:
        0-dim float32 tensor (float64 if an input is float64); it may be negative. Voxels outside
        the box do not affect it. A sample with an empty box contributes 0 (the term only acts
        inside the box). No smoothing constant changes a value.
    """
    w1, w2, eps = _check_ms_hyperparameters(w1, w2, eps)
    probs, box, image = check_volumes(probs, box, image, target_name="box")
    return mumford_shah_loss_per_sample(image, probs, box, w1, w2, eps, check_data_term(data_term)).mean()


class MumfordShahLoss(nn.Module):
    """``L_MS`` (eqs. 5-7) for the Hydra ``loss`` group.

    ``forward(image, probs, target)`` with ``target`` the box mask returns ``{"loss": 0-dim tensor}``.
    """

    def __init__(self, w1: float = 1.0, w2: float = 3.0, eps: float = 0.03, data_term: str = "paper") -> None:
        super().__init__()
        self.w1, self.w2, self.eps = _check_ms_hyperparameters(w1, w2, eps)
        self.data_term = check_data_term(data_term)

    def forward(self, image: Tensor, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"loss": mumford_shah_loss(image, probs, target, self.w1, self.w2, self.eps, self.data_term)}

    def extra_repr(self) -> str:
        return f"w1={self.w1}, w2={self.w2}, eps={self.eps}, data_term={self.data_term}"
