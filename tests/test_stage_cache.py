from wspet.stage_cache import StageCache, stage_key


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
