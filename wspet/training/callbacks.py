"""A stage's Lightning callbacks: the ones wired in code, the ones ``cfg.callbacks`` names by ``_target_``.

Wired in code, because the training code relies on them: the checkpoint (it finds ``best.ckpt``), the
collapse guard, the save-on-signal hook, the validation history (``optimized_metric`` and the run
summary read it from the checkpoint) and the record of where the stage's curves are. Every entry of
``cfg.callbacks`` that is a mapping with a ``_target_`` is instantiated as well (early stopping,
``LearningRateMonitor``, ...); ``callbacks.<name>=null`` drops one. docs/conventions.md.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar
from omegaconf import DictConfig

from wspet.model.checkpoint import read_checkpoint
from wspet.training.loggers import CURVES_KEY, curves_origin

log = logging.getLogger(__name__)

# Entries of cfg.callbacks that configure callbacks wired in code (wspet.training.experiment.fit_stage).
WIRED_SETTINGS = ("checkpoint", "collapse_guard", "convergence")


def build_callbacks(cfg: DictConfig, checkpoint: Callback, guard: Callback, saver: Callback) -> list[Callback]:
    """The callbacks of one stage: the wired ones, then each ``_target_`` entry of ``cfg.callbacks``.

    A log line per validation replaces Lightning's bar when the progress bar is on, stdout is not a
    terminal (a log file would fill with the bar's carriage returns) and the config names no bar.
    """
    callbacks = [checkpoint, guard, saver, ValidationHistory(), CurvesOrigin()]
    callbacks += configured_callbacks(cfg.get("callbacks"))
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if cfg.trainer.get("enable_progress_bar", True) and not sys.stdout.isatty() and not has_bar:
        callbacks.append(ProgressLines())
    return callbacks


def configured_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    """Every entry of ``callbacks_cfg`` but the wired ones' settings, instantiated from its ``_target_``.

    Null entries are skipped; any other entry without a ``_target_`` is refused, naming it.
    """
    built = []
    for name, entry in (callbacks_cfg or {}).items():
        if entry is None or name in WIRED_SETTINGS:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ValueError(f"callbacks.{name}: {entry!r} has no _target_ (the Lightning Callback class to build)")
        callback = instantiate(entry)
        if not isinstance(callback, Callback):
            raise ValueError(f"callbacks.{name}: {entry._target_} is not a Lightning Callback")
        built.append(callback)
    return built


class ValidationHistory(Callback):
    """Every validation's ``val/*`` values by global step, kept in the checkpoints (so resumed and cached
    stages have it). Keyed by step: under a step budget several validations may fall in one epoch."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.steps[trainer.global_step] = values | {"epoch": float(trainer.current_epoch)}

    def state_dict(self) -> dict:
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = dict(state_dict.get("steps", {}))


def best_validation(checkpoint_path: str | Path, metric: str, monitor: str, mode: str) -> dict:
    """``metric`` at the validation whose weights the checkpoint holds (the one at its ``global_step``).

    A checkpoint without that validation in its history (written by fast_dev_run, or a hand-made one)
    falls back to the best ``monitor`` by ``mode`` over its history, first of ties.

    Returns ``{"metric", "value", "step", "epoch", "selected_by", "curves"}``; value, step and epoch are
    None when the checkpoint holds no validation (value also when the metric was not logged). ``curves``: the stage folder whose
    logs hold the training curves (another run's for a stage reused from the stage cache).
    """
    saved = read_checkpoint(checkpoint_path)
    steps = saved.get("callbacks", {}).get(ValidationHistory.__qualname__, {}).get("steps", {})
    curves = (saved.get(CURVES_KEY) or {}).get("stage_dir")
    scored = [(step, values) for step, values in sorted(steps.items()) if math.isfinite(values.get(monitor, math.nan))]
    if not scored:
        scored = sorted(steps.items())[-1:]  # no monitored value (e.g. fast_dev_run): the last validation
    result = {"metric": metric, "value": None, "step": None, "epoch": None, "selected_by": f"{mode} {monitor}", "curves": curves}
    if not scored:
        return result
    # The best checkpoint skips early validations (wspet.training.selection): its own step says which it holds.
    own = saved.get("global_step")
    if own in steps:
        step, values = own, steps[own]
    else:
        sign = -1.0 if mode == "max" else 1.0
        step, values = min(scored, key=lambda item: sign * item[1].get(monitor, 0.0))
    return result | {"value": values.get(metric), "step": int(step), "epoch": int(values["epoch"])}


class CurvesOrigin(Callback):
    """Writes into every checkpoint where this stage's curves are logged (its folder, W&B run, CSV file).

    A stage reused from the stage cache gets a copy of the checkpoint and so learns where its curves are.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CURVES_KEY] = curves_origin(Path(trainer.default_root_dir), trainer.loggers)


class ProgressLines(ProgressBar):
    """One log line per validation: epoch, step, losses, val Dice, time spent and time left at most.

    Time left is from the mean step time so far and the step budget (``max_steps``/``max_epochs``);
    early stopping can end training sooner.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.started = time.monotonic()
        self.first_step = 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.first_step = time.monotonic(), trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking and trainer.is_global_zero:
            log.info(progress_line(trainer, time.monotonic() - self.started, trainer.global_step - self.first_step))


def progress_line(trainer: L.Trainer, elapsed_s: float, steps_done: int) -> str:
    total = trainer.estimated_stepping_batches
    metrics = trainer.callback_metrics
    shown = [f"{k} {float(metrics[k]):.4f}" for k in ("train/loss", "val/loss", "val/dice") if k in metrics]
    budget = f"/{int(total)}" if math.isfinite(total) else ""
    left = "?"
    if steps_done > 0 and math.isfinite(total):
        left = clock(elapsed_s / steps_done * max(total - trainer.global_step, 0))
    return (
        f"epoch {trainer.current_epoch} step {trainer.global_step}{budget}: {', '.join(shown) or 'no metrics yet'}; "
        f"{clock(elapsed_s)} elapsed, at most ~{left} left"
    )


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
