"""Training batches that a resumed run replays exactly: each epoch's draws come from a seed of its own.

Every epoch's training batches are a function of ``(seed, epoch, rank)`` alone, drawn from a random
stream of their own; a run resumed mid-epoch replays the epoch's stream, skips the batches it had
trained on and continues with the same batches the uninterrupted run saw (docs/scaling.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler


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
        trainer: gives ``current_epoch``, ``global_rank`` and ``world_size`` when an epoch starts;
            ``None`` (a loader used outside a Trainer) is epoch 0 on a single device.
    """

    def __init__(self, make_loader: Callable[[Sequence[int]], Iterable], n_volumes: int, seed: int, trainer: L.Trainer | None) -> None:
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

    def _place(self) -> tuple[int, int, int]:
        """(epoch, global rank, world size) now."""
        if self.trainer is None:
            return 0, 0, 1
        return self.trainer.current_epoch, self.trainer.global_rank, self.trainer.world_size

    def shard(self, epoch: int) -> list[int]:
        """The volume indices of this rank in ``epoch`` (all of them, in order, on one device)."""
        _, rank, world = self._place()
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
        epoch, rank, _ = self._place()
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
