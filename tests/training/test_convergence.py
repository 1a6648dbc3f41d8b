"""Runs that end far from convergence say so: the validation loss still falling, or predictions still the boxes."""

import pytest

from wspet.training.convergence import convergence_problems, still_improving


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], True),        # falling all the way to the end
        ([1.0, 0.5, 0.3, 0.25, 0.24, 0.24, 0.239, 0.238], False),  # flattened out
        ([1.0, 0.5, 0.3, 0.31, 0.32, 0.33, 0.34, 0.35], False),  # best in the middle (over-fitting)
        ([1.0, 0.5, 0.2], False),                               # too few validations to judge
        ([0.5, 0.6, 0.7, 0.8], False),                          # never improved: nothing to extrapolate
    ],
)
def test_still_improving(losses, expected):
    assert still_improving(losses) is expected


def history(losses, agreement):
    return {100 * (i + 1): {"val/loss": loss, "val/box_agreement": agreement, "epoch": float(i)} for i, loss in enumerate(losses)}


def test_a_weak_run_still_predicting_boxes_is_reported_with_both_reasons():
    problems = convergence_problems(history([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 0.95), steps=600, watch_box=True)
    assert len(problems) == 2
    assert "still falling fast after 600 steps" in problems[0] and "trainer.max_steps" in problems[0]
    assert "still the boxes" in problems[1] and "0.950" in problems[1]


def test_a_converged_run_and_a_box_loss_report_nothing():
    # The box-Dice stage is meant to predict the boxes: not watched.
    assert convergence_problems(history([1.0, 0.4, 0.31, 0.3, 0.3, 0.3, 0.3, 0.3], 0.97), steps=800) == []


@pytest.mark.parametrize("history_", [{}, {100: {"val/loss": float("nan"), "epoch": 0.0}}])
def test_a_stage_without_a_finite_validation_loss_is_not_converged(history_):
    """trainer.max_steps=0 trained nothing, evaluated the random weights and reported converged: true."""
    problems = convergence_problems(history_, steps=0, watch_box=False)
    assert len(problems) == 1 and "no validation recorded a finite val/loss in 0 steps" in problems[0]


def scored(dices, box_dice):
    return {100 * (i + 1): {"val/loss": 0.3, "val/box_agreement": 0.4, "val/dice": d, "val/box_dice": box_dice}
            for i, d in enumerate(dices)}


def test_a_weak_run_that_never_beat_the_boxes_is_reported():
    problems = convergence_problems(scored([0.10, 0.25, 0.22, 0.20], 0.27), steps=400, watch_box=True)
    assert len(problems) == 1
    assert "never scored above the boxes" in problems[0]
    assert "best val/dice 0.250, the boxes' 0.270" in problems[0]


@pytest.mark.parametrize(
    "history_, watch_box",
    [
        (scored([0.10, 0.30, 0.22, 0.20], 0.27), True),  # above the boxes once: it learnt something
        (scored([0.10, 0.25, 0.22, 0.20], 0.27), False),  # the box-Dice stage is meant to learn the boxes
        (history([0.3, 0.3, 0.3, 0.3], 0.4), True),  # no validation labels: nothing to compare
    ],
)
def test_beating_the_boxes_or_having_nothing_to_compare_reports_nothing(history_, watch_box):
    assert convergence_problems(history_, steps=400, watch_box=watch_box) == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="share 1.5"):
        convergence_problems({}, steps=0, share=1.5)


def test_a_short_run_reports_it_in_the_summary(train_config, tmp_path):
    import wspet.training.experiment as training

    # A validation every step of a 12-step run whose loss is still falling; a strict threshold (any
    # 1% of the fall in the second half) makes the verdict certain, the thresholds are tested above.
    overrides = ["loss=dice", "trainer.max_epochs=null", "trainer.max_steps=12", "trainer.val_check_interval=1",
                 "model.optimizer.lr=1e-3", "evaluate.split=none", "callbacks.early_stopping=null",
                 "callbacks.convergence.share=0.01", "callbacks.convergence.tail=0.5"]
    summary = training.train(train_config(tmp_path, overrides))
    assert summary["converged"] is False
    assert "still falling fast after 12 steps" in summary["not_converged"][0]
    assert summary["stages"]["dice"]["not_converged"] == summary["not_converged"]


def test_a_weak_run_below_the_boxes_reports_it_in_the_summary(train_config, tmp_path):
    import wspet.training.experiment as training

    # Two steps at a learning rate too small to move the net: its predictions are its initial noise,
    # far below what the boxes alone score on the validation labels.
    overrides = ["loss=pseudo", "trainer.max_epochs=null", "trainer.max_steps=2", "trainer.val_check_interval=1",
                 "model.optimizer.lr=1e-9", "evaluate.split=none", "callbacks.early_stopping=null"]
    summary = training.train(train_config(tmp_path, overrides))
    assert summary["converged"] is False
    assert any("never scored above the boxes" in problem for problem in summary["not_converged"])


def test_a_run_of_zero_steps_is_not_converged(train_config, tmp_path):
    import wspet.training.experiment as training

    summary = training.train(train_config(tmp_path, ["loss=fs", "trainer.max_epochs=null", "trainer.max_steps=0", "evaluate.split=none"]))
    assert summary["converged"] is False
    assert any("no validation recorded a finite val/loss in 0 steps" in problem for problem in summary["not_converged"])
