"""The config groups a lightning-hydra-template user reaches for: logger=, callbacks=, debug=, --help."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from tests.conftest import REPO, compose_config
from wspet.model.checkpoint import read_checkpoint
from wspet.model.module import LesionSegmenter
from wspet.training.callbacks import ProgressLines, build_callbacks, clock
from wspet.training.collapse import CollapseGuard
from wspet.training.experiment import train
from wspet.training.selection import SelectiveEarlyStopping
from wspet.training.stage import build_datamodule

FAST = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "evaluate.split=none"]


def logger_classes(overrides: list[str]) -> dict[str, type]:
    cfg = compose_config("train", overrides)
    return {name: get_class(entry._target_) for name, entry in cfg.logger.items()}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("logger=csv", {"csv": CSVLogger}),
        ("logger=wandb", {"wandb": WandbLogger}),
        ("logger=many", {"csv": CSVLogger, "wandb": WandbLogger}),
        ("logger=default", {"csv": CSVLogger, "wandb": WandbLogger}),
    ],
)
def test_logger_group_chooses_the_loggers(choice, expected):
    assert logger_classes([choice]) == expected


def test_default_logger_is_still_csv_and_offline_wandb():
    cfg = compose_config("train")
    assert set(cfg.logger) == {"csv", "wandb"}
    assert cfg.logger.wandb.mode == "offline"


def wired():
    return ModelCheckpoint(), CollapseGuard(), object()


def callback_types(overrides: list[str]) -> list[type]:
    cfg = compose_config("train", ["trainer.enable_progress_bar=false", *overrides])
    return [type(c) for c in build_callbacks(cfg, *wired())]


def test_default_callbacks_add_early_stopping_from_its_target():
    types = callback_types([])
    assert types.count(SelectiveEarlyStopping) == 1
    assert ModelCheckpoint in types and CollapseGuard in types


@pytest.mark.parametrize("overrides", [["callbacks=none"], ["callbacks.early_stopping=null"]])
def test_callbacks_none_or_null_drop_early_stopping_and_keep_checkpoint_and_guard(overrides):
    types = callback_types(overrides)
    assert not any(issubclass(t, EarlyStopping) for t in types)
    assert ModelCheckpoint in types and CollapseGuard in types


@pytest.mark.parametrize(
    "overrides",
    [["callbacks=[default,lr_monitor]"], ["+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"]],
)
def test_an_extra_callback_comes_from_its_target(overrides):
    assert callback_types(overrides).count(LearningRateMonitor) == 1


def test_a_target_that_is_no_callback_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"callbacks\.bad: collections\.OrderedDict is not a Lightning Callback"):
        callback_types(["+callbacks.bad._target_=collections.OrderedDict"])


def test_an_entry_without_target_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"callbacks\.lr: .*has no _target_"):
        callback_types(["+callbacks.lr.logging_interval=step"])


def test_training_with_no_optional_callbacks_and_a_learning_rate_monitor(train_config, tmp_path):
    cfg = train_config(tmp_path, ["loss=dice", "callbacks=[none,lr_monitor]", "trainer.log_every_n_steps=1", *FAST])
    summary = train(cfg)
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        columns = next(csv.reader(f))
    assert "lr-Adam" in columns
    assert summary["validation"]["value"] > 0


@pytest.mark.parametrize(
    ("debug", "expected"),
    [
        ("fdr", {"fast_dev_run": True}),
        ("overfit", {"overfit_batches": 3, "max_epochs": 20}),
        ("limit", {"max_epochs": 3, "limit_train_batches": 0.1, "limit_val_batches": 0.25}),
    ],
)
def test_debug_configs_set_the_trainer_and_log_to_csv_only(debug, expected):
    cfg = compose_config("train", [f"debug={debug}"])
    assert {k: cfg.trainer[k] for k in expected} == expected
    assert set(cfg.logger) == {"csv"}
    assert cfg.stage_cache is None and cfg.data.num_workers == 0
    assert (cfg.callbacks.get("early_stopping") is None) == (debug == "overfit")


@pytest.mark.parametrize("debug", ["fdr", "overfit"])
def test_debug_runs_train_both_stages(debug, train_config, tmp_path):
    cfg = train_config(tmp_path, [f"debug={debug}", "loss=mdice_ms", "trainer.max_epochs=1"])
    summary = train(cfg)
    assert set(summary["stages"]) == {"pretrain_dice", "mdice_ms"}
    assert Path(summary["checkpoint"]).is_file()
    assert summary["validation"]["metric"] == "val/loss" and summary["validation"]["value"] > 0


def test_a_log_line_per_validation_when_stdout_is_not_a_terminal(train_config, tmp_path, caplog):
    cfg = train_config(tmp_path, ["loss=dice", "trainer.enable_progress_bar=true", "trainer.max_epochs=2", *FAST])
    assert not sys.stdout.isatty()  # pytest captures stdout
    assert ProgressLines in [type(c) for c in build_callbacks(cfg, *wired())]
    with caplog.at_level(logging.INFO, logger="wspet.training.callbacks"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "wspet.training.callbacks"]
    assert [line.split(":")[0] for line in lines] == ["epoch 0 step 1/2", "epoch 1 step 2/2"]
    assert all("val/loss" in line and "val/dice" in line and "left" in line for line in lines)


def test_a_progress_bar_from_the_config_replaces_the_log_lines():
    types = callback_types(["trainer.enable_progress_bar=true",
                            "+callbacks.bar._target_=lightning.pytorch.callbacks.TQDMProgressBar"])
    assert ProgressLines not in types and TQDMProgressBar in types


def test_clock_formats_minutes_and_hours():
    assert (clock(59.6), clock(61), clock(3725)) == ("1:00", "1:01", "1:02:05")


def test_train_help_starts_with_usage_and_lists_the_groups():
    env = {**os.environ, "WSPET_ROOT": str(REPO)}
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.startswith("Train and evaluate a wspet experiment")
    assert "Usage:\n  python train.py" in out
    for line in ("debug: default, fdr, limit, overfit", "hparams_search: mdice_ms_optuna",
                 "logger: csv, default, many, wandb"):
        assert line in out
    assert "callbacks:" in out and " none" in out.split("callbacks:")[1].splitlines()[0]


def test_train_refuses_bad_input_with_one_line_naming_it_and_exit_status_1(tmp_path):
    env = {**os.environ, "WSPET_ROOT": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    missing = tmp_path / "no set"
    result = subprocess.run([sys.executable, "train.py", f"data.root={missing}", "data.phantom=null", "logger=csv",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {missing}: no dataset.json in {missing} (see docs/dataset_format.md)" in result.stderr.splitlines()


def test_predict_help_lists_only_what_prediction_uses():
    env = {**os.environ, "WSPET_ROOT": str(REPO)}
    out = subprocess.run([sys.executable, "predict.py", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.startswith("Predict lesion masks") and "python predict.py ckpt=CHECKPOINT input=" in out
    assert "postprocess: none, morphology, levelset, fill_holes" in out and "boxes: null" in out
    for training_only in ("loss:", "trainer:", "callbacks:", "experiment:", "hparams_search:"):
        assert training_only not in out


@pytest.mark.parametrize("data", ["phantom", "sts"])
def test_every_data_key_is_an_argument_of_the_data_module_it_builds(data):
    """The config-to-code contract: a data option is a yaml key and an argument, nothing between."""
    import inspect

    from hydra.utils import get_class

    cfg = compose_config("train", [f"data={data}"])
    arguments = set(inspect.signature(get_class(cfg.data._target_)).parameters)
    keys = set(cfg.data) - {"_target_"}
    assert keys <= arguments, sorted(keys - arguments)
    # What the loss adds; every other argument has its key in the yaml.
    assert arguments - keys == {"supervision", "pseudo_labels"}


@pytest.mark.parametrize(
    ("overrides", "share"),
    [
        ([], 0.15),  # the default loss, pseudo, names its measured share
        (["loss=mdice_ms"], 0.0),  # the paper's rows train without hard negatives
        (["experiment=fs"], 0.0),
        (["loss=pseudo", "loss.hard_negative_probability=0.05"], 0.05),
        (["loss=mdice_ms", "data.hard_negative_probability=0.2"], 0.2),  # data's own key still wins
    ],
)
def test_the_data_module_takes_the_losss_hard_negative_share(overrides, share, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", *overrides])
    assert build_datamodule(cfg).hard_negative_probability == share


@pytest.mark.parametrize(("overrides", "span_box"), [([], False), (["loss.pseudo_labels.span_box=true"], True)])
def test_span_box_reaches_the_pseudo_labels_and_is_off_by_default(overrides, span_box, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", "loss=pseudo", *overrides])
    assert build_datamodule(cfg).pseudo_labels["span_box"] is span_box


@pytest.mark.parametrize(("overrides", "span_gap"), [([], "lesion"), (["loss.pseudo_labels.span_gap=ignore"], "ignore")])
def test_span_gap_reaches_the_pseudo_labels_and_is_lesion_by_default(overrides, span_gap, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", "loss=pseudo", *overrides])
    assert build_datamodule(cfg).pseudo_labels["span_gap"] == span_gap


@pytest.mark.parametrize(("overrides", "ellipsoid"), [([], None), (["loss.pseudo_labels.ellipsoid=[0.8,1.0]"], [0.8, 1.0])])
def test_ellipsoid_reaches_the_pseudo_labels_and_is_off_by_default(overrides, ellipsoid, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", "loss=pseudo", *overrides])
    given = build_datamodule(cfg).pseudo_labels["ellipsoid"]
    assert (None if given is None else list(given)) == ellipsoid


@pytest.mark.parametrize(("overrides", "fill"), [([], False), (["loss.pseudo_labels.fill_holes=true"], True)])
def test_fill_holes_reaches_the_pseudo_labels_and_is_off_by_default(overrides, fill, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", "loss=pseudo", *overrides])
    assert build_datamodule(cfg).pseudo_labels["fill_holes"] is fill


def test_every_model_key_is_an_argument_of_the_module_it_builds():
    import inspect

    from hydra.utils import get_class

    cfg = compose_config("train", ["model=unet3d_norm"])
    arguments = set(inspect.signature(get_class(cfg.model._target_)).parameters)
    keys = set(cfg.model) - {"_target_"}
    assert keys <= arguments, sorted(keys - arguments)
    assert arguments - keys == {"loss", "supervision", "preprocessing", "training_spacing", "training_flips",
                                "training_orientation"}


def test_ema_callback_puts_the_averaged_weights_in_the_best_checkpoint(train_config, tmp_path):
    cfg = train_config(tmp_path, ["loss=dice", "callbacks=[none,ema]", "trainer.max_epochs=2", "evaluate.split=none"])
    summary = train(cfg)
    checkpoint = read_checkpoint(summary["checkpoint"])
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged)
    model = LesionSegmenter.from_checkpoint(summary["checkpoint"])
    name, weight = next(iter(model.state_dict().items()))
    assert torch.equal(weight, averaged[name])


@pytest.mark.parametrize("config", ["train", "predict"])
def test_predicted_lesions_have_their_enclosed_holes_filled_by_default(config):
    overrides = ["ckpt=x.ckpt", "input=x", "output=y"] if config == "predict" else []
    cfg = compose_config(config, overrides)
    assert cfg.postprocess.name == "fill_holes" and cfg.postprocess.fn._target_.endswith("holes.fill_holes")


@pytest.mark.parametrize(("overrides", "balance"), [([], "per_voxel"), (["data.box_balance=per_box"], "per_box")])
def test_box_balance_reaches_the_data_module_and_is_per_voxel_by_default(overrides, balance, tmp_path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.phantom=null", *overrides])
    assert build_datamodule(cfg).box_balance == balance
