"""W&B works with no account and no network: offline by default, grouped and tagged."""

from wspet.training.experiment import train


def test_default_logger_writes_an_offline_wandb_run(train_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = train_config(tmp_path, ["loss=dice", "logger=default", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"])
    assert cfg.logger.wandb.mode == "offline"
    assert cfg.logger.wandb.group == "dice"
    assert list(cfg.logger.wandb.tags) == ["loss:dice", "postprocess:fill_holes"]
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The offline run is a protobuf record stream; its strings show what was logged.
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for logged in (b"test/dice", b"train/loss", b"loss:dice", b"postprocess:fill_holes", b"dice-seed0", b"test/overlays"):
        assert logged in records
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert list(runs[0].glob("files/media/images/test/overlays_*.png"))  # the picture itself
