"""Learning-rate schedules by optimiser step: a linear warm-up, then constant, polynomial or cosine decay.

A step budget (``trainer.max_steps``) fixes the schedule's length whatever the data set's size.
The warm-up keeps the first large updates from saturating the sigmoid (the collapse to all
background); the decay lets the last steps settle instead of rattling around a minimum.
nnU-Net uses ``poly`` with exponent 0.9.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, PolynomialLR, SequentialLR

SCHEDULES = ("constant", "poly", "cosine")


def lr_schedule(
    optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9
) -> LRScheduler:
    """The scheduler of ``optimizer`` over ``total_steps`` steps, stepped once per optimiser step.

    Args:
        name: ``constant``, ``poly`` (``(1 - t / T) ** power``) or ``cosine`` (down to 0).
        total_steps: the whole budget, warm-up included (at least 1).
        warmup_steps: steps of linear warm-up from 1% of the learning rate (0: none); at most
            half of ``total_steps``.
        power: the exponent of ``poly``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"model.scheduler.name {name!r} is not one of {SCHEDULES}")
    if total_steps < 1:
        raise ValueError(f"the schedule needs a positive step budget (trainer.max_steps), got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"model.scheduler.warmup_steps {warmup_steps} must be >= 0")
    # A short run (a debug or tiny budget) warms up for at most half of its steps.
    warmup_steps = min(warmup_steps, total_steps // 2)
    decay_steps = total_steps - warmup_steps
    if name == "poly":
        decay: LRScheduler = PolynomialLR(optimizer, total_iters=decay_steps, power=power)
    elif name == "cosine":
        decay = CosineAnnealingLR(optimizer, T_max=decay_steps)
    else:
        decay = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup_steps == 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
