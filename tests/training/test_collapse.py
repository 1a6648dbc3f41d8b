"""The collapse guard: a run whose predictions all turn to background is stopped, loudly."""

from types import SimpleNamespace

import pytest
import torch

import wspet.training.experiment as training
import wspet.training.stage as stage
from wspet.training.collapse import CollapseGuard, TrainingCollapsedError


def fake_trainer(step, empty_fraction, full_fraction=0.0):
    return SimpleNamespace(
        sanity_checking=False, global_step=step, should_stop=False,
        callback_metrics={"val/empty_fraction": torch.tensor(empty_fraction), "val/full_fraction": torch.tensor(full_fraction)},
    )


def test_guard_waits_for_warmup_and_patience():
    guard = CollapseGuard(warmup_steps=100, patience=2, on_collapse="stop")
    validations = [(50, 1.0), (100, 1.0), (150, 0.5), (200, 1.0), (250, 1.0)]
    stopped = []
    for step, empty in validations:
        trainer = fake_trainer(step, empty)
        guard.on_validation_end(trainer, None)
        stopped.append(trainer.should_stop)
    assert stopped == [False, False, False, False, True]  # step 50 is warm-up; 150 breaks the run of empties
    assert guard.collapsed and guard.state_dict() == {"collapsed_validations": 2, "collapsed": True}


def test_guard_stops_a_run_predicting_lesion_everywhere(caplog):
    guard = CollapseGuard(warmup_steps=0, patience=2, on_collapse="stop")
    stopped = []
    for empty, full in [(0.0, 0.5), (0.0, 1.0), (0.0, 1.0)]:  # half the volumes full is not yet a collapse
        trainer = fake_trainer(300, empty, full)
        guard.on_validation_end(trainer, None)
        stopped.append(trainer.should_stop)
    assert stopped == [False, False, True]
    assert "predicted lesion in most of their voxels" in caplog.text


def test_guard_state_from_an_older_checkpoint_is_read():
    guard = CollapseGuard()
    guard.load_state_dict({"empty_validations": 1, "collapsed": False})
    assert guard.collapsed_validations == 1 and guard.collapsed is False


def test_guard_can_raise_or_ignore():
    with pytest.raises(TrainingCollapsedError, match="model.optimizer.lr"):
        CollapseGuard(warmup_steps=0, patience=1, on_collapse="error").on_validation_end(fake_trainer(0, 1.0), None)
    trainer = fake_trainer(0, 1.0)
    CollapseGuard(warmup_steps=0, patience=1, on_collapse="ignore").on_validation_end(trainer, None)
    assert trainer.should_stop is False
    with pytest.raises(ValueError, match="'sometimes'"):
        CollapseGuard(on_collapse="sometimes")


def train_saturated(train_config, tmp_path, monkeypatch, bias: float, loss: str) -> dict:
    """``train`` for up to 4 epochs of one frozen step, the sigmoid saturated by the head's ``bias``."""
    original = stage.build_model

    def saturated_model(cfg, init_from, data):
        model = original(cfg, init_from, data)
        torch.nn.init.constant_(model.net.head.bias, bias)
        return model

    monkeypatch.setattr(stage, "build_model", saturated_model)
    overrides = [
        f"loss={loss}", "trainer.max_epochs=4", "trainer.limit_train_batches=1", "model.optimizer.lr=0.0",
        "callbacks.collapse_guard.warmup_steps=0", "callbacks.collapse_guard.patience=2",
    ]
    return training.train(train_config(tmp_path, overrides))


def logged(tmp_path, name: str) -> list[float]:
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index(name)
    return [float(value) for row in rows[1:] if (value := row.split(",")[column])]


def test_a_collapsed_run_is_stopped_and_marked(train_config, tmp_path, monkeypatch):
    summary = train_saturated(train_config, tmp_path, monkeypatch, -50.0, "dice")  # background everywhere
    assert summary["collapsed"] is True
    assert summary["test"]["n_pred_empty"] == 2
    assert logged(tmp_path, "val/empty_fraction") == [1.0, 1.0]  # stopped after two empty validations, not four


def test_a_run_saturated_at_lesion_is_stopped_and_marked(train_config, tmp_path, monkeypatch):
    summary = train_saturated(train_config, tmp_path, monkeypatch, 50.0, "fs")  # lesion everywhere
    assert summary["collapsed"] is True
    assert summary["test"]["pred_empty"] == 0.0 and summary["test"]["dice"] < 0.1
    assert logged(tmp_path, "val/full_fraction") == [1.0, 1.0]
