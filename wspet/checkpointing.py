"""What an exact resume needs beyond Lightning's checkpoint: atomic files, a save when told to stop, replayable data.

Lightning's checkpoint restores the weights, the optimizer, the loops (epoch and batch counters) and the
callbacks (early stopping, the best checkpoint, the collapse guard). Three more things make a killed run
resume to the very weights an uninterrupted run reaches (docs/scaling.md):

- :class:`AtomicCheckpointIO`: a checkpoint is written beside its path and renamed onto it, so a kill
  during a save leaves the previous ``last.ckpt``, never half of a new one.
- :class:`SaveOnSignal`: on SIGTERM (Slurm pre-emption, ``scancel``, ``kill``) Lightning stops at the end of
  the running batch; this callback saves ``last.ckpt`` there. Slurm's requeue signal (SIGUSR2, sent
  ``signal_delay_s`` before the time limit) is turned into the same stop, and the requeue handler that was
  installed (submitit's, or Lightning's ``SLURMEnvironment``) runs only after the save.
- :class:`EpochSeededLoader`: every epoch's training batches are a function of ``(seed, epoch, rank)`` alone,
  drawn from a random stream of their own; a run resumed mid-epoch replays the epoch's stream, skips the
  batches it had trained on and continues with the same batches the uninterrupted run saw.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DistributedSampler

from wspet.io import atomic_path

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


class RandomStream:
    """A random stream of its own: inside ``with stream:`` torch (CPU), NumPy and ``random`` draw from it.

    Leaving the block stores the stream's state and puts the global generators back as they were, so
    draws inside never shift draws outside (the model's) and vice versa.
    """

    def __init__(self, seed: int) -> None:
        outside = _rng_state()
        torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays the model's
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self._state = _rng_state()
        _set_rng_state(outside)
        self._outside: tuple | None = None

    def __enter__(self) -> RandomStream:
        self._outside = _rng_state()
        _set_rng_state(self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = _rng_state()
        _set_rng_state(self._outside)


def _rng_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 32-bit seed for one epoch on one rank."""
    if seed < 0:
        raise ValueError(f"seed {seed} must be >= 0")
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochSeededLoader:
    """Training batches that depend on ``(seed, epoch, rank)`` alone, so a resumed run can replay them.

    Each epoch builds a fresh loader with ``make_loader(indices)`` (``indices``: the training volumes this
    rank uses) and draws everything (volume order, patch positions, flips, noise, worker seeds) from a
    :class:`RandomStream` seeded with :func:`epoch_seed`. TorchIO draws from torch's generator only.
    Under DDP (``world_size > 1``) each rank takes an equal share of the volumes, reshuffled each epoch
    as ``DistributedSampler`` does (padded by repeating volumes when they do not divide evenly), so an
    epoch covers every volume once across the ranks, as on one device.

    Lightning saves :meth:`state_dict` (epoch, batches served) in the checkpoint; after
    :meth:`load_state_dict` the same epoch's first iteration skips the batches already served.
    Lightning fetches a sized loader's batches one at a time, so "served" is "trained on".

    Args:
        make_loader: builds the loader of one epoch from volume indices (called inside the stream).
        n_volumes: number of training volumes.
        seed: the run's seed (>= 0).
        trainer: gives ``current_epoch``, ``global_rank`` and ``world_size`` when an epoch starts.
    """

    def __init__(self, make_loader: Callable[[Sequence[int]], Iterable], n_volumes: int, seed: int, trainer: L.Trainer) -> None:
        if n_volumes < 1:
            raise ValueError(f"n_volumes {n_volumes} must be >= 1")
        epoch_seed(seed, 0, 0)  # validates the seed now rather than at the first epoch
        self.make_loader = make_loader
        self.n_volumes = n_volumes
        self.seed = seed
        self.trainer = trainer
        self._length: int | None = None
        self._epoch: int | None = None
        self._served = 0
        self._resume: dict | None = None

    def shard(self, epoch: int) -> list[int]:
        """The volume indices of this rank in ``epoch`` (all of them, in order, on one device)."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            return list(range(self.n_volumes))
        sampler = DistributedSampler(range(self.n_volumes), num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def __len__(self) -> int:
        if self._length is None:
            # Built on a throwaway stream: asking for the length must not draw from any other.
            with RandomStream(0):
                self._length = len(self.make_loader(self.shard(0)))
        return self._length

    def __iter__(self) -> Iterator:
        return self._batches()  # a generator: the epoch is read at the first batch, after Lightning's restore

    def _batches(self) -> Iterator:
        epoch, rank = self.trainer.current_epoch, self.trainer.global_rank
        resume, self._resume = self._resume, None
        skip = resume["served"] if resume and resume.get("epoch") == epoch else 0
        stream = RandomStream(epoch_seed(self.seed, epoch, rank))
        with stream:
            batches = iter(self.make_loader(self.shard(epoch)))
        self._epoch, self._served = epoch, 0
        end = object()
        while True:
            with stream:
                batch = next(batches, end)
            if batch is end:
                return
            self._served += 1
            if self._served > skip:
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)
