from wspet.training.stage_cache import StageCache, stage_key


def test_key_ignores_logging_but_not_training_settings(train_config, tmp_path):
    base = stage_key(train_config(tmp_path, ["loss=dice"]), None)
    assert stage_key(train_config(tmp_path, ["loss=dice", "trainer.log_every_n_steps=1", "data.val_labels=false"]), None) == base
    assert stage_key(train_config(tmp_path, ["loss=dice", "postprocess=levelset"]), None) == base
    assert stage_key(train_config(tmp_path, ["loss=dice", "seed=1"]), None) != base
    assert stage_key(train_config(tmp_path, ["loss=mdice"]), None) != base
    assert stage_key(train_config(tmp_path, ["loss=dice", "model.optimizer.lr=0.001"]), None) != base


def test_key_follows_the_initial_weights_bytes(train_config, tmp_path):
    cfg = train_config(tmp_path, ["loss=mdice"])
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    first.write_bytes(b"weights")
    second.write_bytes(b"weights")
    assert stage_key(cfg, first) == stage_key(cfg, second)
    second.write_bytes(b"other weights")
    assert stage_key(cfg, first) != stage_key(cfg, second)


def test_store_then_lookup(tmp_path):
    cache = StageCache(tmp_path / "cache")
    assert cache.lookup("k") is None
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"abc")
    stored = cache.store("k", checkpoint)
    assert cache.lookup("k") == stored and stored.read_bytes() == b"abc"


def test_a_sweep_trains_an_identical_stage_once(train_config, tmp_path, monkeypatch):
    import wspet.training.experiment as training
    import wspet.training.stage as stage

    fitted = []
    original = stage.fit_stage
    monkeypatch.setattr(stage, "fit_stage", lambda cfg, stage_dir, *a: (fitted.append(stage_dir), original(cfg, stage_dir, *a))[1])
    fast = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", f"stage_cache={tmp_path / 'cache'}"]
    first = training.train(train_config(tmp_path / "a", ["experiment=mdice_ms", *fast]))
    second = training.train(train_config(tmp_path / "b", ["experiment=mdice_ms_morph", *fast]))
    third = training.train(train_config(tmp_path / "c", ["experiment=mdice", *fast]))
    # mdice_ms_morph differs only in post-processing: both its stages come from the cache;
    # mdice shares the box-Dice stage and trains only its own.
    assert fitted == [tmp_path / "a" / "pretrain_dice", tmp_path / "a", tmp_path / "c"]
    assert second["postprocess"] == "morphology" and first["postprocess"] == "fill_holes"
    assert (tmp_path / "b" / "checkpoints" / "best.ckpt").read_bytes() == (tmp_path / "a" / "checkpoints" / "best.ckpt").read_bytes()
    assert third["stages"]["pretrain_dice"]["test"] == first["stages"]["pretrain_dice"]["test"]
