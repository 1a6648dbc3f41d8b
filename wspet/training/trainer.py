"""The Lightning Trainer of a stage: atomic checkpoints, Slurm's requeue signal, precision by hardware, the budget."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from wspet.model.precision import device_type, resolve_precision
from wspet.training.checkpointing import REQUEUE_SIGNAL, AtomicCheckpointIO

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, stage_dir: Path) -> L.Trainer:
    """The configured Trainer with atomic checkpoints and, under Slurm, Slurm's requeue signal.

    ``trainer.precision: auto`` is resolved from the hardware here (:mod:`wspet.model.precision`) and
    logged with its reason; on a GPU, cudnn autotunes its kernels (``benchmark``) unless the
    config sets ``benchmark`` or asks for ``deterministic`` runs.
    """
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Lightning's default requeue signal is SIGUSR1; the launcher's sbatch --signal sends SIGUSR2.
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL))
    device = device_type(cfg.trainer.accelerator)
    choice = resolve_precision(cfg.trainer.precision, device)
    log.info("trainer.precision %s on %s: %s, because %s", cfg.trainer.precision, device, choice.precision, choice.reason)
    settings = {"precision": choice.precision, **training_budget(cfg.trainer)}
    if device == "cuda" and cfg.trainer.get("benchmark") is None and not cfg.trainer.get("deterministic"):
        # Training patches share one shape (validation volumes a few, each tuned once), so the autotuning pays every step after.
        settings["benchmark"] = True
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(stage_dir), plugins=plugins, **settings
    )


def training_budget(trainer_cfg: DictConfig) -> dict:
    """How long to train and when to validate: a step budget, or an epoch budget where one is given.

    A step budget (``max_epochs: null``, the default) trains ``max_steps`` steps and validates every
    ``val_check_interval`` steps across epoch boundaries, at least once per run so that even a short
    run keeps a best checkpoint. A run given ``trainer.max_epochs`` is counted in epochs alone, as
    Lightning counts it, and validates at the end of every epoch.
    """
    if trainer_cfg.get("max_epochs") is not None:
        return {
            "max_steps": -1, "val_check_interval": 1.0,
            "check_val_every_n_epoch": trainer_cfg.get("check_val_every_n_epoch") or 1,
        }
    interval, budget = trainer_cfg.get("val_check_interval") or 100, trainer_cfg.get("max_steps", -1)
    if isinstance(interval, int) and budget and budget > 0:
        interval = min(interval, budget)
    return {"val_check_interval": interval, "check_val_every_n_epoch": None}
