"""Hostile checkpoints (docs/security.md): each payload is refused, naming the file, before any of its
code runs; the marker file a payload would create never appears."""

from __future__ import annotations

import logging
import os
import pickle
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from wspet.training.checkpointing import AtomicCheckpointIO
from wspet.model.checkpoint import load_checkpoint
from wspet.model.module import LesionSegmenter, build_loss
from wspet.inference.predict import predict
from wspet.training.stage_cache import StageCache, digest_path, file_digest, stage_key
from wspet.training.stage import build_datamodule, build_model, cached_stage, evaluate_stage, remember_stage
from wspet.training.stage_result import StageResult

NET = {"features": [4, 8, 16]}


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory) -> Path:
    import lightning as L

    torch.manual_seed(0)
    model = LesionSegmenter(net=NET, loss={"_target_": "wspet.losses.DiceLoss"})
    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "clean.ckpt"
    trainer.save_checkpoint(path)
    return path


def _with_hparams(clean: Path, path: Path, **changes) -> Path:
    checkpoint = torch.load(clean, weights_only=True)
    checkpoint["hyper_parameters"].update(changes)
    torch.save(checkpoint, path)
    return path


def _hub_repo(tmp_path: Path, marker: Path) -> Path:
    repo = tmp_path / "hub"
    repo.mkdir(exist_ok=True)
    (repo / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef x():\n    return None\n")
    return repo


def make_payload(kind: str, clean: Path, tmp_path: Path, marker: Path) -> tuple[Path, str]:
    """A hostile checkpoint file and the text its refusal must show (besides the file name)."""
    path = tmp_path / f"{kind}.ckpt"
    touch = f"touch {shlex.quote(str(marker))}"
    if kind == "pickled_os_system":
        checkpoint = torch.load(clean, weights_only=True)
        checkpoint["callbacks"] = {"evil": Payload(marker)}
        torch.save(checkpoint, path)
        return path, "holding only weights and plain values"
    if kind == "bare_pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
        return path, "not a readable PyTorch checkpoint"
    if kind == "loss_os_system":
        return _with_hparams(clean, path, loss={"_target_": "os.system", "command": touch}), "_target_ 'os.system'"
    if kind == "loss_torch_hub":
        loss = {"_target_": "torch.hub.load", "repo_or_dir": str(_hub_repo(tmp_path, marker)), "model": "x", "source": "local"}
        return _with_hparams(clean, path, loss=loss), "_target_ 'torch.hub.load'"
    if kind == "loss_nested_target":
        loss = {"_target_": "wspet.losses.DiceLoss", "eps": {"_target_": "os.system", "command": touch}}
        return _with_hparams(clean, path, loss=loss), "argument 'eps'="
    if kind == "loss_hydra_args":
        loss = {"_target_": "wspet.losses.DiceLoss", "_args_": [touch]}
        return _with_hparams(clean, path, loss=loss), "argument '_args_'="
    if kind == "optimizer_os_system":
        return _with_hparams(clean, path, optimizer={"_target_": "os.system", "command": touch}), "optimizer: _target_ 'os.system'"
    raise AssertionError(kind)


PAYLOADS = ["pickled_os_system", "bare_pickle", "loss_os_system", "loss_torch_hub", "loss_nested_target",
            "loss_hydra_args", "optimizer_os_system"]


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _scan(tmp_path: Path) -> Path:
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    path = tmp_path / "in" / "scan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image, np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def _predict(path: Path, tmp_path: Path) -> None:
    predict(OmegaConf.create({
        "ckpt": str(path), "input": str(_scan(tmp_path)), "split": "test", "output": str(tmp_path / "out"),
        "overwrite": False, "lesions_csv": True, "mip_png": True, "save_suv": False,
        "window": [16, 16, 16], "overlap": [0, 0, 0], "batch_size": 1, "threshold": 0.5, "device": "cpu",
        "postprocess": {"name": "none", "fn": None},
    }))


def _init_from(path: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config(tmp_path / "data", tmp_path / "run", ["loss=dice", "model.net.features=[4,8,16]"])
    build_model(cfg, str(path), build_datamodule(cfg))


def _evaluate(path: Path, tmp_path: Path) -> None:
    evaluate_stage(OmegaConf.create({}), path, tmp_path / "stage")


def _resume(path: Path, tmp_path: Path) -> None:
    AtomicCheckpointIO().load_checkpoint(path)


ENTRY_POINTS = {"predict": _predict, "init_from": _init_from, "evaluate": _evaluate, "resume": _resume}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_hostile_checkpoint_is_refused_before_its_code_runs(kind, entry, clean_checkpoint, tmp_path, marker):
    path, shown = make_payload(kind, clean_checkpoint, tmp_path, marker)
    if entry == "resume" and kind not in ("pickled_os_system", "bare_pickle"):
        # Resuming rebuilds nothing from the file's hyper-parameters: the model comes from the config.
        AtomicCheckpointIO().load_checkpoint(path)
        assert not marker.exists()
        return
    with pytest.raises(ValueError) as refused:
        ENTRY_POINTS[entry](path, tmp_path)
    message = str(refused.value)
    assert message.startswith(str(path)), message
    if entry != "resume":
        assert shown in message, message
    assert not marker.exists()
    assert not (tmp_path / "out" / "scan_mask.nii.gz").exists()


def test_the_clean_checkpoint_still_loads_everywhere(clean_checkpoint, tmp_path):
    model = LesionSegmenter.from_checkpoint(clean_checkpoint)
    assert model.loss_fn is None  # predicting builds no loss
    assert load_checkpoint(clean_checkpoint)["hyper_parameters"]["loss"]["_target_"] == "wspet.losses.DiceLoss"
    _predict(clean_checkpoint, tmp_path)
    assert (tmp_path / "out" / "scan_mask.nii.gz").is_file()
    assert "state_dict" in AtomicCheckpointIO().load_checkpoint(clean_checkpoint)
    target = LesionSegmenter(net=NET, loss={"_target_": "wspet.losses.DiceLoss"})
    target.load_network(clean_checkpoint)
    assert torch.equal(target.net.state_dict()[next(iter(target.net.state_dict()))],
                       model.net.state_dict()[next(iter(model.net.state_dict()))])


def test_config_losses_outside_wspet_losses_are_refused():
    with pytest.raises(ValueError, match=r"loss: _target_ 'builtins.print' is not one of \[.*'wspet.losses.DiceLoss'"):
        build_loss({"_target_": "builtins.print"})
    assert type(build_loss({"_target_": "wspet.losses.CompositeLoss", "beta": 10.0})).__name__ == "CompositeLoss"
    full_path = build_loss({"_target_": "wspet.losses.dice.DiceLoss"})
    assert type(full_path).__name__ == "DiceLoss"


# --------------------------------------------------------------------------- stage cache


def _plant(cache: Path, key: str, checkpoint: Path, digest: str | None) -> Path:
    entry = cache / key / "best.ckpt"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(checkpoint.read_bytes())
    (entry.parent / "stage.json").write_text('{"collapsed": false}\n')
    if digest is not None:
        digest_path(entry).write_text(digest + "\n")
    return entry


@pytest.mark.parametrize("digest", ["none", "wrong", "matching"])
def test_a_planted_stage_cache_entry_is_not_reused(digest, train_config, clean_checkpoint, tmp_path, marker, caplog):
    cfg = train_config(tmp_path / "run", ["loss=dice"])
    with open_dict(cfg):
        cfg.stage_cache = str(tmp_path / "cache")
    key = stage_key(cfg, None)
    hostile, _ = make_payload("loss_os_system", clean_checkpoint, tmp_path, marker)
    recorded = {"none": None, "wrong": "0" * 64, "matching": file_digest(hostile)}[digest]
    _plant(tmp_path / "cache", key, hostile, recorded)
    with caplog.at_level(logging.WARNING):
        assert cached_stage(cfg, tmp_path / "run", None, "dice") is None
    expected = {"none": "no recorded SHA-256", "wrong": "differs from the recorded", "matching": "_target_ 'os.system'"}
    assert expected[digest] in caplog.text
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert not marker.exists()


def test_a_stored_stage_is_reused_while_its_bytes_match(train_config, clean_checkpoint, tmp_path, caplog):
    cfg = train_config(tmp_path / "run", ["loss=dice"])
    with open_dict(cfg):
        cfg.stage_cache = str(tmp_path / "cache")
    remember_stage(cfg, None, StageResult(name="dice", checkpoint=clean_checkpoint, collapsed=False))
    reused = cached_stage(cfg, tmp_path / "run", None, "dice")
    assert reused is not None and reused.checkpoint.read_bytes() == clean_checkpoint.read_bytes()
    stored = StageCache(tmp_path / "cache").root / stage_key(cfg, None) / "best.ckpt"
    stored.write_bytes(stored.read_bytes() + b"\0")
    with caplog.at_level(logging.WARNING):
        assert cached_stage(cfg, tmp_path / "other", None, "dice") is None
    assert "differs from the recorded" in caplog.text


@pytest.mark.parametrize("record, message", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: nested too deeply"),
    ('{"collapsed": "no"}', 'expected {"collapsed": true | false}'),
    ("\xff", "not valid JSON"),
])
def test_a_stored_stage_with_a_bad_record_is_trained_again(train_config, clean_checkpoint, tmp_path, caplog, record, message):
    cfg = train_config(tmp_path / "run", ["loss=dice"])
    with open_dict(cfg):
        cfg.stage_cache = str(tmp_path / "cache")
    remember_stage(cfg, None, StageResult(name="dice", checkpoint=clean_checkpoint, collapsed=False))
    stage_json = StageCache(tmp_path / "cache").root / stage_key(cfg, None) / "stage.json"
    stage_json.write_text(record, encoding="latin-1")
    with caplog.at_level(logging.WARNING):
        assert cached_stage(cfg, tmp_path / "run", None, "dice") is None
    assert "not reusing cached stage" in caplog.text and f"{stage_json}: {message}" in caplog.text


@pytest.mark.parametrize("flips", [[0, 7], "auto", [[0]], {"_target_": "os.system"}])
def test_bad_training_flips_in_a_checkpoint_are_refused_by_file_and_value(clean_checkpoint, tmp_path, flips):
    path = _with_hparams(clean_checkpoint, tmp_path / "flips.ckpt", training_flips=flips)
    with pytest.raises(ValueError, match=r"flips.ckpt: hyper-parameters do not build a wspet model: the checkpoint's "
                                         r"training_flips .* are not distinct volume axes"):
        LesionSegmenter.from_checkpoint(path)


@pytest.mark.parametrize("codes", [["L", "L", "S"], "LPS", [0, 1, 2], {"_target_": "os.system"}])
def test_a_bad_training_orientation_in_a_checkpoint_is_refused_by_file_and_value(clean_checkpoint, tmp_path, codes):
    path = _with_hparams(clean_checkpoint, tmp_path / "axes.ckpt", training_orientation=codes)
    with pytest.raises(ValueError, match=r"axes.ckpt: hyper-parameters do not build a wspet model: the checkpoint's "
                                         r"training_orientation .* is not three axis codes"):
        LesionSegmenter.from_checkpoint(path)


def test_a_checkpoint_asking_for_a_huge_network_is_refused_before_allocating_it(clean_checkpoint, tmp_path):
    """Its config would allocate about 300 GB of weights; built on the meta device, it allocates none."""
    path = _with_hparams(clean_checkpoint, tmp_path / "huge.ckpt", net={"features": [4096, 8192, 16384, 32768, 65536]})
    with pytest.raises(ValueError, match=r"huge.ckpt: weights do not fit the network config net=.*: weight net\.\S+ has "
                                         r"shape \(\d+.*\), the config builds \((4096|8192|16384|32768|65536)"):
        LesionSegmenter.from_checkpoint(path)


@pytest.mark.parametrize("weights", [[1, 2], {"net.head.weight": 5}, {3: torch.zeros(1)}, "weights"])
def test_a_state_dict_that_is_not_named_tensors_is_refused_naming_the_file(clean_checkpoint, tmp_path, weights):
    checkpoint = torch.load(clean_checkpoint, weights_only=True)
    checkpoint["state_dict"] = weights
    torch.save(checkpoint, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match=r"weights.ckpt: state_dict .* is not a mapping of weight names to tensors"):
        LesionSegmenter.from_checkpoint(tmp_path / "weights.ckpt")
