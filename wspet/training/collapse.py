"""Guard against the known failure of box-supervised Dice training: collapse to all background.

With a large step (Adam at lr 1e-3 on this U-Net) the sigmoid saturates at 0 within ~100 steps;
the Dice gradient then vanishes and the run never recovers, while its loss looks merely "high".
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

ACTIONS = ("stop", "error", "ignore")


class TrainingCollapsedError(RuntimeError):
    """Every validation prediction stayed empty for several validations."""


class CollapseGuard(Callback):
    """Watch ``val/empty_fraction`` (share of validation volumes predicted empty).

    After ``warmup_steps`` optimiser steps, ``patience`` consecutive validations where every volume is predicted
    empty count as a collapse: ``stop`` ends training with an error in the log (the run is
    marked ``collapsed``), ``error`` raises :class:`TrainingCollapsedError`, ``ignore`` only logs.
    """

    def __init__(self, warmup_steps: int = 200, patience: int = 2, on_collapse: str = "stop") -> None:
        if on_collapse not in ACTIONS:
            raise ValueError(f"on_collapse {on_collapse!r} is not one of {ACTIONS}")
        if patience < 1 or warmup_steps < 0:
            raise ValueError(f"patience {patience} must be >= 1 and warmup_steps {warmup_steps} >= 0")
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.on_collapse = on_collapse
        self.empty_validations = 0
        self.collapsed = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step < self.warmup_steps:
            return
        empty = trainer.callback_metrics.get("val/empty_fraction")
        if empty is None:
            return
        self.empty_validations = self.empty_validations + 1 if float(empty) >= 1.0 else 0
        if self.empty_validations < self.patience or self.collapsed:
            return
        self.collapsed = True
        message = (
            f"training collapsed: every validation volume predicted empty for {self.empty_validations} "
            f"validations (step {trainer.global_step}); lower the learning rate (model.optimizer.lr) "
            "or raise data.box_sampling_probability"
        )
        if self.on_collapse == "error":
            raise TrainingCollapsedError(message)
        log.error(message)
        if self.on_collapse == "stop":
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"empty_validations": self.empty_validations, "collapsed": self.collapsed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.empty_validations = state_dict["empty_validations"]
        self.collapsed = state_dict["collapsed"]
