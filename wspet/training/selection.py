"""Which validations may choose a stage's model: none in the first share of its step budget.

``best.ckpt`` is the validation with the lowest ``val/loss``, and early stopping counts validations
since that one. Both are decided by a handful of validation volumes (5 on the real sarcoma scans, 3
in a 16-case set), early in training at the highest learning rate, when the weights still move
most between validations. On the real scans every run whose best validation came in the first 400
of its 2000 steps (4 of 27) scored below every run whose best came later (docs/training.md, "Which
validations choose the model"). So validations before ``selection_start`` of the stage's steps
neither become ``best.ckpt`` nor count for early stopping; they are still logged, kept in the
validation history and watched by the collapse guard and the convergence check.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint


def check_selection_start(share: object) -> float:
    """``share`` as a float in [0, 1); ValueError naming the setting otherwise."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise ValueError(f"callbacks.checkpoint.selection_start {share!r} is not a share in [0, 1) of the step budget")
    return value


def selection_start_step(trainer: L.Trainer, share: float) -> int:
    """The first global step whose validation may choose the model: ``ceil(share x the stage's steps)``.

    The stage's steps are Lightning's estimate for the run's budget (``max_steps``, or ``max_epochs`` x
    the batches of an epoch); a budget with no end (``max_steps: -1`` without epochs) starts at 0.
    """
    total = trainer.estimated_stepping_batches
    return math.ceil(share * total) if math.isfinite(total) else 0


def too_early(trainer: L.Trainer, share: float) -> bool:
    """Whether the current validation comes before :func:`selection_start_step`."""
    return trainer.global_step < selection_start_step(trainer, share)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that ignores validations before :func:`selection_start_step`.

    A run that ends before any validation it may choose keeps none; the stage then evaluates its
    last weights (``wspet.training.stage``).
    """

    def __init__(self, *args, selection_start: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.selection_start = check_selection_start(selection_start)

    def _should_skip_saving_checkpoint(self, trainer: L.Trainer) -> bool:
        return too_early(trainer, self.selection_start) or super()._should_skip_saving_checkpoint(trainer)


class SelectiveEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` whose patience starts at :func:`selection_start_step`, as ``best.ckpt`` does."""

    def __init__(self, *args, selection_start: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.selection_start = check_selection_start(selection_start)

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return too_early(trainer, self.selection_start) or super()._should_skip_check(trainer)
