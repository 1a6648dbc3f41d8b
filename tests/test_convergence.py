"""Runs that end far from convergence say so: the validation loss still falling, or predictions still the boxes."""

from types import SimpleNamespace

import pytest
import torch

from wspet.convergence import ConvergenceCheck, still_improving


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], True),      # falling all the way to the end
        ([1.0, 0.5, 0.3, 0.25, 0.24, 0.24, 0.239, 0.238], False),  # flattened out
        ([1.0, 0.5, 0.3, 0.31, 0.32, 0.33, 0.34, 0.35], False),  # best in the middle (over-fitting)
        ([1.0, 0.5, 0.2], False),                               # too few validations to judge
        ([0.5, 0.6, 0.7, 0.8], False),                          # never improved: nothing to extrapolate
    ],
)
def test_still_improving(losses, expected):
    assert still_improving(losses) is expected


def validate(check, loss, agreement):
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/loss": torch.tensor(loss), "val/box_agreement": torch.tensor(agreement)})
    check.on_validation_end(trainer, None)


def test_a_weak_run_still_predicting_boxes_is_reported_with_both_reasons():
    check = ConvergenceCheck(watch_box=True)
    for loss in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        validate(check, loss, 0.95)
    check.on_fit_end(SimpleNamespace(global_step=60), None)
    assert len(check.problems) == 2
    assert "still falling fast after 60 steps" in check.problems[0] and "trainer.max_steps" in check.problems[0]
    assert "still the boxes" in check.problems[1] and "0.950" in check.problems[1]


def test_a_converged_run_and_a_box_loss_report_nothing():
    check = ConvergenceCheck(watch_box=False)  # the box-Dice stage is meant to predict the boxes
    for loss in (1.0, 0.4, 0.31, 0.3, 0.3, 0.3, 0.3, 0.3):
        validate(check, loss, 0.97)
    check.on_fit_end(SimpleNamespace(global_step=800), None)
    assert check.problems == []
    restored = ConvergenceCheck()
    restored.load_state_dict(check.state_dict())
    assert restored.losses == check.losses and restored.verdict(800) == []
