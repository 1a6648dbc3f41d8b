"""Guard against the known failures of Dice training on this U-Net: collapse to all background or all lesion.

With a large step (Adam at lr 1e-3 on this U-Net) the sigmoid saturates at 0 within ~100 steps;
the Dice gradient then vanishes and the run never recovers, while its loss looks merely "high".
At lr 3e-4 the Dice loss of ``loss=fs`` saturated it at 1 instead, in one of two seeds: every
voxel predicted lesion from step 160 on, validation Dice 0.001, and the loss flat at 0.998.
In bf16 on real scans ``loss=fs`` at 1e-4 saturated the same way at step 400 of 2000 after a
validation Dice of 0.65 at step 300. ``recover`` (the default) then puts back the weights of the
last validation that was not collapsed, clears the optimiser's moments and lowers the learning
rate, instead of ending the run with a quarter of its budget trained.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

ACTIONS = ("recover", "stop", "error", "ignore")
# The validation metrics that show a collapse, each the share of validation volumes that are so.
SIGNS = {"val/empty_fraction": "predicted empty", "val/full_fraction": "predicted lesion in most of their voxels"}


class TrainingCollapsedError(RuntimeError):
    """Every validation prediction stayed empty (or all lesion) for several validations."""


class CollapseGuard(Callback):
    """Watch ``val/empty_fraction`` and ``val/full_fraction`` (shares of validation volumes predicted
    empty, and predicted lesion in more than half their voxels).

    After ``warmup_steps`` optimiser steps, ``patience`` consecutive validations where every volume is predicted
    empty, or every volume full, count as a collapse:

    - ``recover`` restores the weights of the last validation that showed neither sign (or, before
      any did, the weights training started from), clears the optimisers' state (Adam's moments
      carry the steps that diverged) and multiplies the learning rate by ``lr_factor``, at most
      ``max_recoveries`` times; each recovery is logged as a warning and listed in ``recoveries``.
      With none left it stops.
    - ``stop`` ends training with an error in the log (the run is marked ``collapsed``);
    - ``error`` raises :class:`TrainingCollapsedError`; ``ignore`` only logs.
    """

    def __init__(
        self, warmup_steps: int = 200, patience: int = 2, on_collapse: str = "recover",
        max_recoveries: int = 2, lr_factor: float = 0.5,
    ) -> None:
        if on_collapse not in ACTIONS:
            raise ValueError(f"on_collapse {on_collapse!r} is not one of {ACTIONS}")
        if patience < 1 or warmup_steps < 0 or max_recoveries < 0:
            raise ValueError(
                f"patience {patience} must be >= 1, warmup_steps {warmup_steps} and max_recoveries {max_recoveries} >= 0"
            )
        if not 0 < lr_factor < 1:
            raise ValueError(f"lr_factor {lr_factor} must lie in (0, 1): a recovery lowers the learning rate")
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.on_collapse = on_collapse
        self.max_recoveries = max_recoveries
        self.lr_factor = lr_factor
        self.collapsed_validations = 0
        self.collapsed = False
        self.recoveries: list[dict] = []
        self._healthy: tuple[int, dict] | None = None  # (step, weights on the CPU) to go back to
        self._last_signs: list[str] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run that collapses before its first healthy validation (the paper's U-Net at Adam 1e-3
        # did within 100 steps) goes back to the weights it started from.
        if self.on_collapse == "recover":
            self._remember(trainer.global_step, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.collapsed:
            return
        signs = [SIGNS[name] for name in SIGNS
                 if trainer.callback_metrics.get(name) is not None and float(trainer.callback_metrics[name]) >= 1.0]
        if not signs and self.on_collapse == "recover":
            self._remember(trainer.global_step, pl_module)
        if trainer.global_step < self.warmup_steps:
            return
        self.collapsed_validations = self.collapsed_validations + 1 if signs else 0
        self._last_signs = signs
        if self.collapsed_validations < self.patience:
            return
        what = f"every validation volume {signs[0]} for {self.collapsed_validations} validations (step {trainer.global_step})"
        if self.on_collapse == "recover" and self._healthy is not None and len(self.recoveries) < self.max_recoveries:
            self._recover(trainer, pl_module, what)
            return
        self.collapsed = True
        tried = f" after {len(self.recoveries)} recoveries" if self.recoveries else ""
        message = (
            f"training collapsed{tried}: {what}; lower the learning rate (model.optimizer.lr) "
            "or raise data.box_sampling_probability"
        )
        if self.on_collapse == "error":
            raise TrainingCollapsedError(message)
        log.error(message)
        if self.on_collapse in ("stop", "recover"):
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The budget can run out right after a recovery, or before patience is reached again.
        if self._last_signs and self.recoveries and not self.collapsed:
            self.collapsed = True
            log.error(
                "training ended collapsed: its last validation (step %d) had every volume %s after %d recoveries",
                trainer.global_step, self._last_signs[0], len(self.recoveries),
            )

    def _remember(self, step: int, pl_module: L.LightningModule) -> None:
        self._healthy = (step, {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()})

    def _recover(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> None:
        step, weights = self._healthy
        pl_module.load_state_dict(weights)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        lr = scale_learning_rates(trainer.optimizers, schedulers, self.lr_factor)
        self.collapsed_validations = 0
        self.recoveries.append({"step": trainer.global_step, "restored_step": step, "lr": lr})
        log.warning(
            "training collapsed: %s; restored the weights of step %d and lowered the learning rate to %.3g "
            "(recovery %d of at most %d)", what, step, lr, len(self.recoveries), self.max_recoveries,
        )

    def state_dict(self) -> dict:
        return {"collapsed_validations": self.collapsed_validations, "collapsed": self.collapsed, "recoveries": self.recoveries}

    def load_state_dict(self, state_dict: dict) -> None:
        # Checkpoints written before the all-lesion collapse was watched count "empty_validations".
        self.collapsed_validations = state_dict.get("collapsed_validations", state_dict.get("empty_validations", 0))
        self.collapsed = state_dict["collapsed"]
        self.recoveries = list(state_dict.get("recoveries", []))


def scale_learning_rates(optimizers: list, schedulers: list, factor: float) -> float:
    """Multiply every learning rate by ``factor``, in the optimisers and in their schedulers'
    base rates (PyTorch's schedulers restart from those at a warm-up's end); returns the first group's new rate.
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
    for scheduler in schedulers:
        for part in [scheduler, *getattr(scheduler, "_schedulers", [])]:
            if hasattr(part, "base_lrs"):
                part.base_lrs = [lr * factor for lr in part.base_lrs]
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else float("nan")
