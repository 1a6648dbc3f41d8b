"""Say when a run ended far from convergence, instead of reporting its numbers as if it had learnt.

A run given too few steps (a step budget cut short, a tiny data set counted in epochs) leaves a
model whose validation loss is still falling fast, or, for a weak loss, whose predictions are still
the boxes it was shown. Both are visible in the validation history; this callback reads it.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def still_improving(losses: list[float], tail: float = 0.25, share: float = 0.1) -> bool:
    """Whether the last ``tail`` of the validations brought more than ``share`` of the total gain.

    ``losses``: ``val/loss`` at each validation, in order. The gain is the fall from the first
    value to the best one; a converged run gains little at its end. Fewer than 4 validations, or
    no gain at all, say nothing (False).
    """
    if len(losses) < 4:
        return False
    cut = max(1, min(len(losses) - 1, round(len(losses) * (1 - tail))))
    best_before, best = min(losses[:cut]), min(losses)
    gain = losses[0] - best
    return gain > 0 and (best_before - best) > share * gain


class ConvergenceCheck(Callback):
    """Record ``val/loss`` and ``val/box_agreement`` at every validation; judge the run at its end.

    Args:
        tail, share: see :func:`still_improving`.
        box_agreement: above this Dice between prediction and box at the last validation the
            prediction is still the box (checked only with ``watch_box``: weak losses meant to
            shrink the boxes to lesions).
        watch_box: whether the box check applies to this stage.

    After training, :attr:`problems` lists what was found (empty: no sign of an unfinished run),
    each also logged as a warning.
    """

    def __init__(self, tail: float = 0.25, share: float = 0.1, box_agreement: float = 0.9, watch_box: bool = False) -> None:
        if not 0 < tail < 1 or not 0 < share < 1 or not 0 < box_agreement <= 1:
            raise ValueError(f"tail {tail} and share {share} must lie in (0, 1), box_agreement {box_agreement} in (0, 1]")
        self.tail, self.share, self.box_agreement, self.watch_box = tail, share, box_agreement, watch_box
        self.losses: list[float] = []
        self.agreements: list[float] = []
        self.problems: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if "val/loss" in metrics:
            self.losses.append(float(metrics["val/loss"]))
        if "val/box_agreement" in metrics:
            self.agreements.append(float(metrics["val/box_agreement"]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.problems = self.verdict(trainer.global_step)
        for problem in self.problems:
            log.warning("not converged: %s", problem)

    def verdict(self, steps: int) -> list[str]:
        problems = []
        if still_improving(self.losses, self.tail, self.share):
            problems.append(
                f"val/loss was still falling fast after {steps} steps ({self.losses[0]:.4f} -> {min(self.losses):.4f}, "
                f"more than {self.share:.0%} of the gain in the last {self.tail:.0%} of validations); "
                "raise trainer.max_steps"
            )
        if self.watch_box and self.agreements and self.agreements[-1] > self.box_agreement:
            problems.append(
                f"predictions are still the boxes after {steps} steps (Dice with the box {self.agreements[-1]:.3f} > "
                f"{self.box_agreement}); raise trainer.max_steps or check the loss"
            )
        return problems

    def state_dict(self) -> dict:
        return {"losses": self.losses, "agreements": self.agreements}

    def load_state_dict(self, state_dict: dict) -> None:
        self.losses = list(state_dict["losses"])
        self.agreements = list(state_dict["agreements"])
