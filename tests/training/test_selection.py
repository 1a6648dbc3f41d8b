"""wspet.training.selection: validations early in the budget neither become best.ckpt nor count for early stopping."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from wspet.training.selection import (
    BestCheckpoint, SelectiveEarlyStopping, check_selection_start, selection_start_step,
)


class ScriptedLoss(L.LightningModule):
    """A model whose validation loss at its n-th validation is ``losses[n]``."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses, self.validations = losses, 0

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val/loss", self.losses[self.validations])
            self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(1, 1), batch_size=1)


def fit(tmp_path, losses, start, patience=None):
    best = BestCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", mode="min", selection_start=start)
    callbacks = [best]
    if patience is not None:
        callbacks.append(SelectiveEarlyStopping(monitor="val/loss", mode="min", patience=patience, selection_start=start))
    trainer = L.Trainer(max_steps=len(losses), val_check_interval=1, check_val_every_n_epoch=None, callbacks=callbacks,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(ScriptedLoss(losses))
    chosen = torch.load(best.best_model_path, weights_only=True)["global_step"] if best.best_model_path else None
    return chosen, trainer.global_step


def test_an_early_lucky_validation_does_not_become_best(tmp_path):
    losses = [0.1, 0.5, 0.4, 0.3]  # validations at steps 1 to 4
    assert fit(tmp_path / "all", losses, 0.0)[0] == 1
    assert fit(tmp_path / "late", losses, 0.5)[0] == 4  # steps 1 is before ceil(0.5 x 4) = 2


def test_early_stopping_counts_from_the_same_step(tmp_path):
    losses = [0.1, 0.5, 0.4, 0.3, 0.35, 0.36, 0.37, 0.38]
    assert fit(tmp_path / "all", losses, 0.0, patience=2) == (1, 3)  # no improvement on 0.1 at steps 2 and 3
    assert fit(tmp_path / "late", losses, 0.25, patience=2) == (4, 6)  # from step 2: best 0.3 at 4, none better at 5, 6


def test_a_run_that_reaches_its_budget_can_always_choose_its_last_validation(tmp_path):
    assert fit(tmp_path, [0.1, 0.2], 0.9)[0] == 2  # ceil(0.9 x 2) = 2: only the last one


@pytest.mark.parametrize("share", [-0.1, 1.0, math.nan, "x", None])
def test_selection_start_outside_0_1_is_refused_by_name(share):
    with pytest.raises(ValueError, match="callbacks.checkpoint.selection_start"):
        check_selection_start(share)


class Budget:
    def __init__(self, total):
        self.estimated_stepping_batches = total


@pytest.mark.parametrize(("total", "share", "start"), [(2000, 0.25, 500), (500, 0.25, 125), (10, 0.25, 3),
                                                        (2000, 0.0, 0), (math.inf, 0.25, 0)])
def test_start_is_the_share_of_the_budget_rounded_up(total, share, start):
    assert selection_start_step(Budget(total), share) == start
