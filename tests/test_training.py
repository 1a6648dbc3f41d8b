"""train(cfg) end to end on tiny phantoms: every loss config, the two stages, the run folder."""

import json
import math

import pytest

from wspet.data import format as dataset_format
from wspet.training import needs_pretraining, train

FAST = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.mark.parametrize("loss", ["fs", "dice", "mdice", "mdice_ms"])
def test_train_runs_each_loss_and_writes_the_run_folder(train_config, tmp_path, loss):
    cfg = train_config(tmp_path, [f"loss={loss}", "trainer.fast_dev_run=1"])
    summary = train(cfg)
    assert summary["loss"] == loss
    assert 0.0 <= summary["test"]["dice"] <= 1.0
    assert summary["test"]["n_cases"] == 2
    assert (tmp_path / "summary.json").is_file()
    assert (tmp_path / "overlays.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["experiment"] == loss
    assert (tmp_path / "test_metrics.csv").read_text().count("\n") == 3  # header + 2 cases
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["hn_006_mask.nii.gz", "hn_007_mask.nii.gz"]
    weak_after_dice = loss in ("mdice", "mdice_ms")
    assert (tmp_path / "pretrain_dice" / "summary.json").exists() is False
    assert (tmp_path / "pretrain_dice" / "test_metrics.csv").is_file() == weak_after_dice
    assert ("pretrain_dice" in summary["stages"]) == weak_after_dice


def test_pretraining_rule(train_config, tmp_path):
    def rule(*overrides):
        return needs_pretraining(train_config(tmp_path, list(overrides)))

    assert rule("loss=mdice_ms") and rule("loss=mdice")
    assert not rule("loss=dice") and not rule("loss=fs")
    assert not rule("loss=mdice_ms", "model.init_from=some.ckpt")
    assert not rule("loss=mdice_ms", "pretrain.enabled=false")
    assert rule("loss=dice", "pretrain.enabled=true")


def test_weak_training_reads_no_training_label(train_config, tmp_path, monkeypatch):
    read = []
    original = dataset_format.load_label

    def spy(path, image):
        read.append(path.name)
        return original(path, image)

    monkeypatch.setattr("wspet.data.datamodule.load_label", spy)
    monkeypatch.setattr("wspet.evaluation.load_label", spy)
    cfg = train_config(tmp_path, ["loss=mdice_ms", "data.val_labels=false", *FAST])
    train(cfg)
    test_labels = {"hn_006.nii.gz", "hn_007.nii.gz"}
    assert read and set(read) <= test_labels  # only the evaluation read labels, of test cases


def test_second_stage_starts_from_the_first_stage_weights(train_config, tmp_path, monkeypatch):
    loaded = []
    import wspet.training as training

    original = training.load_network_weights
    monkeypatch.setattr(training, "load_network_weights", lambda m, p: (loaded.append(p), original(m, p)))
    train(train_config(tmp_path, ["loss=mdice", *FAST]))
    assert [str(p) for p in loaded] == [str(tmp_path / "pretrain_dice" / "checkpoints" / "best.ckpt")]


def test_init_from_a_different_network_names_the_key(train_config, tmp_path):
    first = tmp_path / "first"
    train(train_config(first, ["loss=dice", *FAST]))
    checkpoint = first / "checkpoints" / "best.ckpt"
    cfg = train_config(tmp_path / "second", ["loss=mdice", f"model.init_from={checkpoint}", "model.net.features=[4,8,16]", *FAST])
    with pytest.raises(ValueError, match=r"model.net.features is \[8, 16, 32\] in the checkpoint but \[4, 8, 16\]"):
        train(cfg)


def test_unknown_loss_lists_the_choices(train_config, tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="mdice_ms"):
        train_config(tmp_path, ["loss=nonsense"])


def test_csv_log_has_the_loss_terms(train_config, tmp_path):
    train(train_config(tmp_path, ["loss=mdice_ms", "pretrain.enabled=false", "trainer.log_every_n_steps=1", *FAST]))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("train/loss", "train/loss_mdice", "train/loss_ms", "train/box_fraction", "val/loss", "val/dice"):
        assert column in header
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not math.isnan(summary["test"]["dice"])
