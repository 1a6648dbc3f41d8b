"""The paper's composite loss ``L = beta L_MDice + lambda L_MS``, eq. (1) of Afshari et al. 2019.

Two options beyond the paper, both off by default: ``gate="per_box"`` (each box its own step in
``L_MDice``) and ``data_term="chan_vese"`` (the squared data term in ``L_MS``).
"""

from __future__ import annotations

from torch import Tensor, nn

from wspet.losses.checks import check_hyperparameter, check_volumes
from wspet.losses.modified_dice import box_fraction_per_sample, check_gate, modified_dice_loss_per_sample
from wspet.losses.mumford_shah import _check_ms_hyperparameters, check_data_term, mumford_shah_loss_per_sample

__all__ = ["CompositeLoss", "composite_loss"]


def _check_composite_hyperparameters(
    beta: float, lam: float, alpha: float, w1: float, w2: float, eps: float
) -> tuple[float, ...]:
    return (
        check_hyperparameter("beta", beta, 0.0),
        check_hyperparameter("lam", lam, 0.0),
        check_hyperparameter("alpha", alpha, 0.0, 1.0, high_open=True),
        *_check_ms_hyperparameters(w1, w2, eps),
    )


def _composite_terms(
    image: Tensor, probs: Tensor, box: Tensor, beta: float, lam: float, alpha: float, w1: float, w2: float, eps: float,
    gate: str = "union", data_term: str = "paper",
) -> dict[str, Tensor]:
    probs, box, image = check_volumes(probs, box, image, target_name="box")
    mdice = modified_dice_loss_per_sample(probs, box, alpha, gate).mean()
    ms = mumford_shah_loss_per_sample(image, probs, box, w1, w2, eps, data_term).mean()
    return {
        "loss": beta * mdice + lam * ms,
        "loss_mdice": mdice.detach(),
        "loss_ms": ms.detach(),
        "box_fraction": box_fraction_per_sample(probs, box).mean(),
    }


def composite_loss(
    image: Tensor,
    probs: Tensor,
    box: Tensor,
    beta: float = 10.0,
    lam: float = 1.0,
    alpha: float = 0.1,
    w1: float = 1.0,
    w2: float = 3.0,
    eps: float = 0.03,
    gate: str = "union",
    data_term: str = "paper",
) -> Tensor:
    """``beta L_MDice + lam L_MS`` (eq. 1), the mean over the batch.

    Args:
        image: (B, 1, D, H, W) the network's normalised input.
        probs: (B, 1, D, H, W) sigmoid outputs in [0, 1].
        box: (B, 1, D, H, W) {0, 1} union of the training boxes.
        beta, lam: non-negative term weights (paper: 10 and 1).
        alpha, gate: see :func:`~wspet.losses.modified_dice_loss`; w1, w2, eps, data_term: see
            :func:`~wspet.losses.mumford_shah_loss`.

    Returns:
        0-dim float32 tensor (float64 if an input is float64). For a sample with an empty box it is
        ``beta mean(p)`` (``L_MDice`` gives ``mean(p)``, ``L_MS`` gives 0).
    """
    hyper = _check_composite_hyperparameters(beta, lam, alpha, w1, w2, eps)
    return _composite_terms(image, probs, box, *hyper, check_gate(gate), check_data_term(data_term))["loss"]


class CompositeLoss(nn.Module):
    """``L = beta L_MDice + lambda L_MS`` (eq. 1) for the Hydra ``loss`` group.

    ``forward(image, probs, target)`` with ``target`` the box mask returns
    ``{"loss", "loss_mdice", "loss_ms", "box_fraction"}``: the differentiable total and, detached
    for logging, the unweighted terms and the batch mean of ``sum(p b) / sum b`` (0 for empty boxes).
    """

    def __init__(
        self,
        beta: float = 10.0,
        lam: float = 1.0,
        alpha: float = 0.1,
        w1: float = 1.0,
        w2: float = 3.0,
        eps: float = 0.03,
        gate: str = "union",
        data_term: str = "paper",
    ) -> None:
        super().__init__()
        self.beta, self.lam, self.alpha, self.w1, self.w2, self.eps = _check_composite_hyperparameters(
            beta, lam, alpha, w1, w2, eps
        )
        self.gate, self.data_term = check_gate(gate), check_data_term(data_term)

    def forward(self, image: Tensor, probs: Tensor, target: Tensor) -> dict[str, Tensor]:
        return _composite_terms(
            image, probs, target, self.beta, self.lam, self.alpha, self.w1, self.w2, self.eps, self.gate, self.data_term
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, lam={self.lam}, alpha={self.alpha}, w1={self.w1}, w2={self.w2}, eps={self.eps}, "
            f"gate={self.gate}, data_term={self.data_term}"
        )
