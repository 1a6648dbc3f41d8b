"""hparams_search=mdice_ms_optuna: a 2-trial Optuna search on tiny data tunes on validation, not test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, compose_config

TINY = [
    "data.phantom=null", "data.volume_size=[32,32,32]", "data.patch_size=[32,32,32]", "data.batch_size=1",
    "data.samples_per_volume=1", "model.net.features=[8,16,32]", "trainer.max_epochs=1",
    "trainer.limit_train_batches=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv",
    "evaluate.window=[32,32,32]", "evaluate.overlap=[0,0,0]",
]


def test_search_config_maximises_validation_dice_over_lr_beta_and_lambda():
    cfg = compose_config("train", ["hparams_search=mdice_ms_optuna"])
    assert cfg.optimized_metric == "val/dice"
    assert cfg.loss.name == "mdice_ms"


def test_two_trial_optuna_search_on_tiny_data(tiny_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "train.py", "hparams_search=mdice_ms_optuna", "hydra.sweeper.n_trials=2",
        f"data.root={tiny_dataset}", *TINY, f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WSPET_ROOT": str(REPO), "WANDB_MODE": "disabled"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert [p.name for p in trials] == ["0", "1"]
    values, params = [], []
    for trial in trials:
        summary = json.loads((trial / "summary.json").read_text())
        assert summary["validation"]["metric"] == "val/dice"
        values.append(summary["validation"]["value"])
        config = yaml.safe_load((trial / "config.yaml").read_text())
        params.append((config["model"]["optimizer"]["lr"], config["loss"]["module"]["beta"], config["loss"]["module"]["lam"]))
        assert summary["test"]  # evaluated on test as usual, but the sweeper was given validation
    assert result["best_value"] == pytest.approx(max(values))
    best = params[values.index(max(values))]
    assert tuple(result["best_params"][k] for k in ("model.optimizer.lr", "loss.module.beta", "loss.module.lam")) == pytest.approx(best)
    assert params[0] != params[1]  # each trial was given its own parameters
    for lr, beta, lam in params:
        assert 1e-5 <= lr <= 1e-3 and 1.0 <= beta <= 30.0 and 0.1 <= lam <= 10.0
