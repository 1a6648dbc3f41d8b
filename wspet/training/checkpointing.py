"""What an exact resume needs beyond Lightning's checkpoint: atomic files and a save when told to stop.

Lightning's checkpoint restores the weights, the optimizer, the loops (epoch and batch counters) and the
callbacks (early stopping, the best checkpoint, the collapse guard). Two more things, and the replayable
training batches of :mod:`wspet.data.replay`, make a killed run
resume to the very weights an uninterrupted run reaches (docs/scaling.md):

- :class:`AtomicCheckpointIO`: a checkpoint is written beside its path and renamed onto it, so a kill
  during a save leaves the previous ``last.ckpt``, never half of a new one.
- :class:`SaveOnSignal`: on SIGTERM (Slurm pre-emption, ``scancel``, ``kill``) Lightning stops at the end of
  the running batch; this callback saves ``last.ckpt`` there. Slurm's requeue signal (SIGUSR2, sent
  ``signal_delay_s`` before the time limit) is turned into the same stop, and the requeue handler that was
  installed (submitit's, or Lightning's ``SLURMEnvironment``) runs only after the save.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wspet.io import atomic_path
from wspet.training.selection import BestCheckpoint

log = logging.getLogger(__name__)

# The signal Slurm sends before the time limit: submitit's `--signal=USR2@<signal_delay_s>`.
REQUEUE_SIGNAL = signal.SIGUSR2
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local files appear whole or not at all (:func:`wspet.io.atomic_path`).

    Lightning's own save goes through an fsspec transaction whose temporary file lies in the system's
    temporary folder; when that is another file system than the run folder (node-local ``/tmp``, shared run
    folder: the usual cluster) the final move is a copy, and a kill during it truncates ``last.ckpt``.
    Remote URLs (``s3://`` ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's load, always weights-only: resuming from ``ckpt_path=`` runs nothing in the file.

        ``torch>=2.1`` is allowed, and torch before 2.6 unpickles anything by default (docs/security.md).
        """
        location = {} if map_location is None else {"map_location": map_location}  # else Lightning's: keep devices
        try:
            return super().load_checkpoint(path, weights_only=True, **location)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else "UnpicklingError"
            raise ValueError(f"{path}: not a checkpoint holding only weights and plain values ({first})") from None


class SaveOnSignal(Callback):
    """Save ``path`` (the stage's ``last.ckpt``) at the batch boundary where a signal stops training.

    SIGTERM: Lightning's own handler marks the trainer and raises ``SIGTERMException`` once the running
    batch is done (all DDP ranks at the same batch); :meth:`on_exception` saves then.
    The requeue signal (SIGUSR2): if a handler for it is installed when training starts (submitit's, which
    re-pickles the job, requeues it and exits; or Lightning's ``SLURMEnvironment(auto_requeue=True)``), it is
    held back: the signal only raises SIGTERM in this process, so training stops and saves as above, and
    :meth:`hand_over` then runs the held-back handler. A requeue handler thus never runs in the middle of
    an optimizer step.
    """

    def __init__(self, path: str | os.PathLike, requeue_signal: signal.Signals = REQUEUE_SIGNAL) -> None:
        self.path = Path(path)
        self.requeue_signal = requeue_signal
        self.held_back: Callable | None = None  # the requeue handler installed before training
        self.pending: int | None = None  # the requeue signal, once received
        self.saved = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        handler = signal.getsignal(self.requeue_signal)
        if callable(handler) and threading.current_thread() is threading.main_thread():
            self.held_back = handler
            signal.signal(self.requeue_signal, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        log.warning("received %s: stopping after this batch to save %s, then requeueing", signal.Signals(signum).name, self.path)
        self.pending = signum
        signal.raise_signal(signal.SIGTERM)  # Lightning's stop at the batch boundary, as for pre-emption

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)
            self.saved = True
            log.warning("stopped by a signal at epoch %d, step %d; saved %s", trainer.current_epoch, trainer.global_step, self.path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def _release(self) -> None:
        """Give the requeue signal back to the handler it was held from."""
        if self.held_back is not None and signal.getsignal(self.requeue_signal) == self._hold:
            signal.signal(self.requeue_signal, self.held_back)

    def hand_over(self) -> None:
        """After the stop: run the held-back requeue handler if the requeue signal came (it may exit)."""
        if self.pending is not None and self.held_back is not None:
            handler, self.held_back = self.held_back, None
            handler(self.pending, None)


def stage_checkpoints(folder: Path, settings: Mapping[str, Any]) -> tuple[ModelCheckpoint, ModelCheckpoint | None]:
    """``best.ckpt`` by ``settings`` (``callbacks.checkpoint``; validations before its ``selection_start`` share of
    the budget never become it: :mod:`wspet.training.selection`) and, if ``settings.save_last``, ``last.ckpt``.

    ``last.ckpt`` is written at every validation by a second ``ModelCheckpoint`` that monitors nothing:
    Lightning 2.6 writes the first one's own ``last.ckpt`` only beside a new best, which left it a copy of
    ``best.ckpt`` and made a killed run resume from its last improvement instead of its last validation.
    """
    settings = dict(settings)
    keep_last = bool(settings.pop("save_last", False))
    best = BestCheckpoint(dirpath=folder, filename="best", **settings)
    if not keep_last:
        return best, None
    last = ModelCheckpoint(dirpath=folder, filename=Path(LAST).stem, monitor=None, save_top_k=1, enable_version_counter=False)
    return best, last


def resume_checkpoint(stage_dir: Path) -> Path | None:
    """The checkpoint a resumed stage continues from: ``<stage>/checkpoints/last.ckpt``, or None."""
    path = Path(stage_dir) / "checkpoints" / LAST
    return path if path.is_file() else None


def requeued_by_slurm() -> bool:
    """True in the second and later attempt of a Slurm job (requeued by Slurm or submitit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def launch_rank_is_zero() -> bool:
    """Whether this process is global rank 0, as its launcher tells before any Trainer exists.

    Lightning's launcher sets ``LOCAL_RANK`` (and ``NODE_RANK``) for the processes it starts, torchrun sets
    ``RANK``, srun ``SLURM_PROCID``; rank 0 is the process for which every one that is set is 0.
    """
    keys = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    return all(int(os.environ[k]) == 0 for k in keys if re.fullmatch(r"\d+", os.environ.get(k, "")))
