"""The collapse guard: a run whose predictions all turn to background (or lesion) is recovered or stopped, loudly."""

from types import SimpleNamespace

import pytest
import torch

from lightning.pytorch.callbacks import Callback

import wspet.training.experiment as training
import wspet.training.stage as stage
from wspet.model.lr_schedule import lr_schedule
from wspet.training.collapse import CollapseGuard, TrainingCollapsedError, scale_learning_rates


def fake_trainer(step, empty_fraction, full_fraction=0.0, optimizers=(), schedulers=()):
    return SimpleNamespace(
        sanity_checking=False, global_step=step, should_stop=False,
        callback_metrics={"val/empty_fraction": torch.tensor(empty_fraction), "val/full_fraction": torch.tensor(full_fraction)},
        optimizers=list(optimizers), lr_scheduler_configs=[SimpleNamespace(scheduler=s) for s in schedulers],
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
    assert guard.collapsed and guard.state_dict() == {"collapsed_validations": 2, "collapsed": True, "recoveries": []}


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
    with pytest.raises(ValueError, match="lr_factor 1.5"):
        CollapseGuard(lr_factor=1.5)


def adam_with_poly(lr=1e-3, steps=100, warmup=10):
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    return net, optimizer, lr_schedule(optimizer, "poly", steps, warmup_steps=warmup)


def test_recovery_restores_the_last_healthy_weights_clears_adam_and_halves_the_rate(caplog):
    net, optimizer, scheduler = adam_with_poly()
    guard = CollapseGuard(warmup_steps=0, patience=2, on_collapse="recover", max_recoveries=1, lr_factor=0.5)
    healthy = {k: v.clone() for k, v in net.state_dict().items()}
    guard.on_validation_end(fake_trainer(100, 0.0, optimizers=[optimizer], schedulers=[scheduler]), net)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()  # the step that "diverged": new weights and Adam moments
    torch.nn.init.constant_(net.bias, 50.0)
    lr_before = optimizer.param_groups[0]["lr"]
    for step in (200, 300):
        trainer = fake_trainer(step, 0.0, 1.0, optimizers=[optimizer], schedulers=[scheduler])
        guard.on_validation_end(trainer, net)
    assert trainer.should_stop is False and guard.collapsed is False
    assert all(torch.equal(net.state_dict()[k], healthy[k]) for k in healthy)
    assert optimizer.state == {}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_before / 2)
    assert guard.recoveries == [{"step": 300, "restored_step": 100, "lr": pytest.approx(lr_before / 2)}]
    assert "restored the weights of step 100" in caplog.text
    for step in (400, 500):  # a second collapse with no recovery left stops the run
        trainer = fake_trainer(step, 0.0, 1.0, optimizers=[optimizer], schedulers=[scheduler])
        guard.on_validation_end(trainer, net)
    assert trainer.should_stop is True and guard.collapsed is True
    assert "after 1 recoveries" in caplog.text


def test_a_run_collapsed_before_any_healthy_validation_goes_back_to_its_starting_weights():
    net, optimizer, scheduler = adam_with_poly()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    guard = CollapseGuard(warmup_steps=0, patience=1, on_collapse="recover")
    guard.on_train_start(fake_trainer(0, 0.0, optimizers=[optimizer], schedulers=[scheduler]), net)
    torch.nn.init.constant_(net.bias, -50.0)
    trainer = fake_trainer(100, 1.0, optimizers=[optimizer], schedulers=[scheduler])
    guard.on_validation_end(trainer, net)
    assert trainer.should_stop is False and guard.recoveries[0]["restored_step"] == 0
    assert torch.equal(net.bias, start["bias"])


def test_recovery_with_nothing_to_go_back_to_stops():
    guard = CollapseGuard(warmup_steps=0, patience=1, on_collapse="recover")
    trainer = fake_trainer(100, 1.0)
    guard.on_validation_end(trainer, torch.nn.Linear(1, 1))
    assert trainer.should_stop is True and guard.collapsed is True and guard.recoveries == []


def test_a_lowered_rate_holds_past_the_warm_up_and_through_the_decay():
    _, reference, reference_schedule = adam_with_poly()
    _, optimizer, scheduler = adam_with_poly()
    for _ in range(5):  # inside the warm-up
        for o, s in ((reference, reference_schedule), (optimizer, scheduler)):
            o.step()
            s.step()
    scale_learning_rates([optimizer], [scheduler], 0.5)
    for _ in range(50):  # across the warm-up's end and into the decay
        for o, s in ((reference, reference_schedule), (optimizer, scheduler)):
            o.step()
            s.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"] / 2)


def train_saturated(train_config, tmp_path, monkeypatch, bias: float, loss: str, action: str = "stop") -> dict:
    """``train`` for up to 4 epochs of one frozen step, the sigmoid saturated by the head's ``bias``."""
    original = stage.build_model

    def saturated_model(cfg, init_from, data):
        model = original(cfg, init_from, data)
        torch.nn.init.constant_(model.net.head.bias, bias)
        return model

    monkeypatch.setattr(stage, "build_model", saturated_model)
    overrides = [
        f"loss={loss}", "trainer.max_epochs=4", "trainer.limit_train_batches=1", "model.optimizer.lr=0.0",
        "callbacks.collapse_guard.warmup_steps=0", "callbacks.collapse_guard.patience=2", f"callbacks.collapse_guard.on_collapse={action}",
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


def test_a_run_collapsed_from_its_start_stops_after_its_recoveries(train_config, tmp_path, monkeypatch):
    summary = train_saturated(train_config, tmp_path, monkeypatch, -50.0, "dice", action="recover")
    # validations 2 and 4 each recover to the (saturated) starting weights at half the rate; max_epochs=4 ends it
    assert [r["restored_step"] for r in summary["collapse_recoveries"]] == [0, 0]
    assert [r["step"] for r in summary["collapse_recoveries"]] == [2, 4]
    assert summary["collapsed"] is True and summary["converged"] is False  # it ended collapsed
    assert logged(tmp_path, "val/empty_fraction") == [1.0] * 4


class DivergeOnce(Callback):
    """Saturate the head at lesion after ``step`` optimiser steps, once: a run that diverges mid-way."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.done:
            torch.nn.init.constant_(pl_module.net.head.bias, 50.0)
            self.done = True


def test_a_run_that_diverges_mid_way_goes_on_from_its_last_healthy_weights(train_config, tmp_path, monkeypatch):
    original = stage.build_callbacks
    monkeypatch.setattr(stage, "build_callbacks", lambda *a: original(*a) + [DivergeOnce(step=2)])
    original_model = stage.build_model

    def healthy_model(cfg, init_from, data):  # neither empty nor mostly lesion at the start
        model = original_model(cfg, init_from, data)
        torch.nn.init.constant_(model.net.head.bias, -1.0)
        return model

    monkeypatch.setattr(stage, "build_model", healthy_model)
    overrides = [
        "loss=fs", "trainer.max_epochs=6", "trainer.limit_train_batches=1", "model.optimizer.lr=0.0",
        "callbacks.collapse_guard.warmup_steps=0", "callbacks.collapse_guard.patience=2", "callbacks.early_stopping=null",
    ]
    summary = training.train(train_config(tmp_path, overrides))
    assert summary["collapsed"] is False and summary["converged"] is True
    assert [(r["step"], r["restored_step"]) for r in summary["collapse_recoveries"]] == [(4, 2)]
    assert logged(tmp_path, "val/full_fraction")[2:4] == [1.0, 1.0]
    assert logged(tmp_path, "val/full_fraction")[4:] == logged(tmp_path, "val/full_fraction")[:2]  # the healthy weights again
