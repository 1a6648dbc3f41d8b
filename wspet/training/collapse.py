"""Guard against the known failures of Dice training on this U-Net: collapse to all background or all lesion.

With a large step (Adam at lr 1e-3 on this U-Net) the sigmoid saturates at 0 within ~100 steps;
the Dice gradient then vanishes and the run never recovers, while its loss looks merely "high".
At lr 3e-4 the Dice loss of ``loss=fs`` saturated it at 1 instead, in one of two seeds: every
voxel predicted lesion from step 160 on, validation Dice 0.001, and the loss flat at 0.998.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

ACTIONS = ("stop", "error", "ignore")
# The validation metrics that show a collapse, each the share of validation volumes that are so.
SIGNS = {"val/empty_fraction": "predicted empty", "val/full_fraction": "predicted lesion in most of their voxels"}


class TrainingCollapsedError(RuntimeError):
    """Every validation prediction stayed empty (or all lesion) for several validations."""


class CollapseGuard(Callback):
    """Watch ``val/empty_fraction`` and ``val/full_fraction`` (shares of validation volumes predicted
    empty, and predicted lesion in more than half their voxels).

    After ``warmup_steps`` optimiser steps, ``patience`` consecutive validations where every volume is predicted
    empty, or every volume full, count as a collapse: ``stop`` ends training with an error in the
    log (the run is marked ``collapsed``), ``error`` raises :class:`TrainingCollapsedError`,
    ``ignore`` only logs.
    """

    def __init__(self, warmup_steps: int = 200, patience: int = 2, on_collapse: str = "stop") -> None:
        if on_collapse not in ACTIONS:
            raise ValueError(f"on_collapse {on_collapse!r} is not one of {ACTIONS}")
        if patience < 1 or warmup_steps < 0:
            raise ValueError(f"patience {patience} must be >= 1 and warmup_steps {warmup_steps} >= 0")
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.on_collapse = on_collapse
        self.collapsed_validations = 0
        self.collapsed = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_step < self.warmup_steps:
            return
        signs = [SIGNS[name] for name in SIGNS
                 if trainer.callback_metrics.get(name) is not None and float(trainer.callback_metrics[name]) >= 1.0]
        self.collapsed_validations = self.collapsed_validations + 1 if signs else 0
        if self.collapsed_validations < self.patience or self.collapsed:
            return
        self.collapsed = True
        message = (
            f"training collapsed: every validation volume {signs[0]} for {self.collapsed_validations} "
            f"validations (step {trainer.global_step}); lower the learning rate (model.optimizer.lr) "
            "or raise data.box_sampling_probability"
        )
        if self.on_collapse == "error":
            raise TrainingCollapsedError(message)
        log.error(message)
        if self.on_collapse == "stop":
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"collapsed_validations": self.collapsed_validations, "collapsed": self.collapsed}

    def load_state_dict(self, state_dict: dict) -> None:
        # Checkpoints written before the all-lesion collapse was watched count "empty_validations".
        self.collapsed_validations = state_dict.get("collapsed_validations", state_dict.get("empty_validations", 0))
        self.collapsed = state_dict["collapsed"]
