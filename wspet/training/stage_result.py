"""What one training stage left (``StageResult``), and the pretraining stage's name.

The final stage trains in the run folder itself; the paper's box-Dice pretraining stage, when a run
needs it, in the run folder's ``PRETRAIN_STAGE`` subfolder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wspet.metrics.summary import mean_metrics

PRETRAIN_STAGE = "pretrain_dice"


@dataclass
class StageResult:
    """What one training stage left: its best checkpoint and test metrics."""

    name: str
    checkpoint: Path
    collapsed: bool
    test_rows: list[dict] = field(default_factory=list)
    evaluated: bool = False
    steps: int = 0  # optimiser steps trained (0: unknown, e.g. a stage reused from the stage cache)
    # Signs that training ended far from convergence (wspet.training.convergence); empty when none were seen.
    not_converged: list[str] = field(default_factory=list)
    # Optimiser steps per second of trainer.fit's wall time, validation included (None: resumed or reused).
    steps_per_second: float | None = None
    # Collapses the guard recovered from: {"step", "restored_step", "lr"} each (wspet.training.collapse).
    recoveries: list[dict] = field(default_factory=list)

    @property
    def test_summary(self) -> dict:
        return mean_metrics(self.test_rows) if self.test_rows else {}
