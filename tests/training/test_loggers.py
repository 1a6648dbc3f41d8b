"""A stage's W&B run: the whole config, the tags key, the same run on resume, the curves of a cached stage."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import wandb
from lightning.pytorch.loggers import WandbLogger

from wspet.training.loggers import CURVES_KEY, WANDB_ID_FILE, build_loggers, finish_loggers, log_test_metrics
from wspet.training.stage_result import StageResult
from wspet.training.experiment import train


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B runs offline under tmp_path (the test suite disables W&B otherwise)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield
    if wandb.run is not None:
        wandb.finish()


def wandb_logger(loggers: list) -> WandbLogger:
    (logger,) = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    return logger


def test_wandb_run_gets_the_whole_resolved_config_and_the_tags_key(train_config, tmp_path, offline_wandb):
    cfg = train_config(tmp_path, ["logger=wandb", "loss=dice", "seed=7", "postprocess=morphology", "tags=[baseline,v2]"])
    loggers = build_loggers(cfg, tmp_path / "stage")
    try:
        run = wandb_logger(loggers).experiment
        config = dict(run.config)
        assert (config["seed"], config["experiment_name"], config["postprocess"]["name"]) == (7, "dice", "morphology")
        assert config["data"]["root"] == str(cfg.data.root)
        assert config["trainer"]["max_epochs"] == 1
        assert list(run.tags) == ["loss:dice", "postprocess:morphology", "baseline", "v2"]
    finally:
        finish_loggers(loggers)


def test_a_resumed_stage_continues_the_recorded_wandb_run(train_config, tmp_path, offline_wandb):
    cfg = train_config(tmp_path, ["logger=many"])
    stage = tmp_path / "stage"
    ids = []
    for resumed in (False, True, False):
        loggers = build_loggers(cfg, stage, resumed=resumed)
        logger = wandb_logger(loggers)
        ids.append((logger.version, (stage / WANDB_ID_FILE).read_text().strip(), "resumed" in logger.experiment.tags))
        finish_loggers(loggers)
    first, resumed, fresh = ids
    assert first[0] == first[1] and not first[2]
    assert resumed == (first[0], first[0], True)  # same run id, tagged resumed
    assert fresh[0] != first[0] and fresh[1] == fresh[0]  # a fresh start records a new run
    runs = [p.name for p in (stage / "wandb").glob("offline-run-*")]  # offline-run-<time>-<id>[-k]
    assert sum(f"-{first[0]}" in name for name in runs) == 2


def test_a_recorded_run_id_that_is_no_id_is_refused_naming_the_file(train_config, tmp_path):
    cfg = train_config(tmp_path, ["logger=wandb"])
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / WANDB_ID_FILE).write_text("../../etc\n")
    with pytest.raises(ValueError, match=rf"{WANDB_ID_FILE}: '../../etc' is not a W&B run id"):
        build_loggers(cfg, stage, resumed=True)


def test_a_reused_stage_says_in_its_wandb_summary_where_its_curves_are(train_config, tmp_path, offline_wandb):
    origin = {"stage_dir": str(tmp_path / "trained_here"), "wandb_run_id": "abc12345", "wandb_project": "wspet", "csv": []}
    checkpoint = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, CURVES_KEY: origin}, checkpoint)
    stage = tmp_path / "reused_here"
    loggers = build_loggers(train_config(tmp_path, ["logger=wandb"]), stage)
    try:
        result = StageResult(name="dice", checkpoint=checkpoint, collapsed=False)
        log_test_metrics(loggers, result, stage / "overlays.png")
        assert dict(wandb_logger(loggers).experiment.summary["curves_from"]) == origin
    finally:
        finish_loggers(loggers)


def test_stage_cache_runs_point_at_the_run_that_trained_the_stage(train_config, tmp_path, caplog):
    cache = tmp_path / "cache"
    fast = ["loss=dice", f"stage_cache={cache}", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    first = train(train_config(tmp_path / "first", fast))
    with caplog.at_level(logging.INFO, logger="wspet.training.loggers"):
        second = train(train_config(tmp_path / "second", fast))
    trained = str((tmp_path / "first").resolve())
    assert first["validation"]["curves"] == trained
    assert second["validation"]["curves"] == trained  # the summary says where the curves are
    assert second["validation"]["value"] == first["validation"]["value"]
    assert any(f"its training curves are in {trained}" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "second" / "summary.json").read_text())["validation"]["curves"] == trained


def test_optimized_metric_is_the_validation_value_the_kept_checkpoint_had(train_config, tmp_path):
    cfg = train_config(tmp_path, ["loss=dice", "optimized_metric=val/dice", "trainer.max_epochs=3",
                                  "trainer.limit_train_batches=1", "evaluate.split=none"])
    validation = train(cfg)["validation"]
    rows = [r for r in _csv_rows(tmp_path / "csv" / "metrics.csv") if r.get("val/loss")]
    best = min(rows, key=lambda r: float(r["val/loss"]))
    assert validation["metric"] == "val/dice" and validation["selected_by"] == "min val/loss"
    assert validation["epoch"] == int(best["epoch"])
    assert validation["value"] == pytest.approx(float(best["val/dice"]))


def _csv_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))
