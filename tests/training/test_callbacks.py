"""wspet.training.callbacks: the validation history kept in checkpoints and the value a sweeper is given."""

from __future__ import annotations

import csv

import pytest
import torch

from wspet.training.callbacks import ValidationHistory, best_validation
from wspet.training.experiment import train


def test_every_validation_is_kept_even_several_in_one_epoch(train_config, tmp_path):
    cfg = train_config(tmp_path, ["loss=dice", "trainer.max_epochs=null", "trainer.max_steps=4",
                                  "trainer.val_check_interval=2", "evaluate.split=none"])
    summary = train(cfg)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps = saved["callbacks"][ValidationHistory.__qualname__]["steps"]
    assert sorted(steps) == [2, 4] and {v["epoch"] for v in steps.values()} == {0.0}
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert sorted(v["val/loss"] for v in steps.values()) == pytest.approx(sorted(logged))
    best_step = min(steps, key=lambda s: steps[s]["val/loss"])
    assert summary["validation"]["step"] == best_step
    assert summary["validation"]["value"] == pytest.approx(steps[best_step]["val/loss"])


def history_checkpoint(path, steps: dict) -> str:
    torch.save({"callbacks": {ValidationHistory.__qualname__: {"steps": steps}}}, path)
    return str(path)


def test_best_validation_follows_the_monitor_and_its_mode(tmp_path):
    steps = {10: {"val/loss": 0.5, "val/dice": 0.2, "epoch": 0.0}, 20: {"val/loss": 0.4, "val/dice": 0.1, "epoch": 1.0},
             30: {"val/loss": 0.4, "val/dice": 0.6, "epoch": 2.0}}
    path = history_checkpoint(tmp_path / "h.ckpt", steps)
    by_loss = best_validation(path, "val/dice", "val/loss", "min")
    assert (by_loss["value"], by_loss["step"], by_loss["epoch"]) == (0.1, 20, 1)  # the first of equal losses
    by_dice = best_validation(path, "val/dice", "val/dice", "max")
    assert (by_dice["value"], by_dice["step"]) == (0.6, 30)
    assert best_validation(path, "val/nope", "val/loss", "min")["value"] is None


def test_a_checkpoint_without_history_gives_no_value(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, path)
    assert best_validation(path, "val/loss", "val/loss", "min") | {"curves": None} == {
        "metric": "val/loss", "value": None, "step": None, "epoch": None, "selected_by": "min val/loss", "curves": None}


def test_best_validation_is_the_one_the_checkpoint_holds(tmp_path):
    steps = {10: {"val/loss": 0.1, "epoch": 0.0}, 20: {"val/loss": 0.4, "epoch": 1.0}, 30: {"val/loss": 0.3, "epoch": 2.0}}
    path = tmp_path / "best.ckpt"
    torch.save({"global_step": 30, "callbacks": {ValidationHistory.__qualname__: {"steps": steps}}}, path)
    chosen = best_validation(path, "val/loss", "val/loss", "min")
    assert (chosen["value"], chosen["step"], chosen["epoch"]) == (0.3, 30, 2)  # not step 10, which selection skipped
