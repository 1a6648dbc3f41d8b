"""The training budget is counted in optimiser steps: a small set and a set twice its size train equally long."""

import csv

import wspet.training.experiment as training
from tests.conftest import TINY_SHAPE, compose_config
from wspet.datasets.phantom import write_phantom_dataset


def validation_steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/loss")]


def test_the_default_budget_is_in_steps():
    trainer = compose_config("train").trainer
    assert trainer.max_epochs is None and trainer.max_steps >= 1000 and trainer.check_val_every_n_epoch is None


def test_sets_of_different_sizes_get_the_same_number_of_steps(config_on, tiny_dataset, tmp_path):
    larger = tmp_path / "larger"
    write_phantom_dataset(larger, n_train=12, n_test=1, seed=5, shape=TINY_SHAPE)
    budget = ["loss=dice", "trainer.max_epochs=null", "trainer.max_steps=7", "trainer.val_check_interval=3", "evaluate.split=none"]
    steps, validations = [], []
    for name, root in (("small", tiny_dataset), ("large", larger)):
        out = tmp_path / name
        summary = training.train(config_on(root, out, budget))
        steps.append(summary["stages"]["dice"]["steps"])
        validations.append(validation_steps(out))
        assert summary["stages"]["dice"]["steps_per_second"] > 0  # the training rate, for comparing runs
    # 5 training cases make 5 batches an epoch, 10 make 10: the epochs differ, the steps do not.
    assert steps == [7, 7]
    assert validations == [[2, 5], [2, 5]]  # every 3 steps (counted from 0), whatever the epoch
