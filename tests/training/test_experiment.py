"""train(cfg) end to end on tiny phantoms: every loss config, the two stages, the run folder."""

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from wspet.data import format as dataset_format
from wspet.data.format import DatasetError
from wspet.model.module import LesionSegmenter
from wspet.training.experiment import needs_pretraining, train

FAST = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.mark.parametrize("loss", ["fs", "dice", "mdice", "mdice_ms"])
def test_train_runs_each_loss_and_writes_the_run_folder(train_config, tmp_path, loss):
    cfg = train_config(tmp_path, [f"loss={loss}", "trainer.fast_dev_run=1"])
    summary = train(cfg)
    assert summary["loss"] == loss
    assert summary["supervision"] == ("label" if loss == "fs" else "box")
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


def test_each_stage_trains_at_its_loss_learning_rate(train_config, tmp_path):
    summary = train(train_config(tmp_path, ["loss=mdice", "loss.learning_rate=2e-4", "pretrain.loss.learning_rate=5e-5", *FAST]))
    rates = {name: torch.load(stage["checkpoint"], weights_only=True)["hyper_parameters"]["optimizer"]["lr"]
             for name, stage in summary["stages"].items()}
    assert rates == {"pretrain_dice": 5e-5, "mdice": 2e-4}
    assert train_config(tmp_path, ["loss=pseudo"]).model.optimizer.lr == 3e-4  # the measured defaults
    assert train_config(tmp_path, ["loss=mdice_ms"]).model.optimizer.lr == 1e-4
    assert train_config(tmp_path, ["loss=pseudo", "model.optimizer.lr=1e-3"]).model.optimizer.lr == 1e-3


def test_weak_training_reads_no_training_label(train_config, tmp_path, monkeypatch):
    read = []
    original = dataset_format.load_label

    def spy(path, image):
        read.append(path.name)
        return original(path, image)

    monkeypatch.setattr("wspet.data.datamodule.load_label", spy)
    monkeypatch.setattr("wspet.evaluation.evaluate.load_label", spy)
    cfg = train_config(tmp_path, ["loss=mdice_ms", "data.val_labels=false", *FAST])
    train(cfg)
    test_labels = {"hn_006.nii.gz", "hn_007.nii.gz"}
    assert read and set(read) <= test_labels  # only the evaluation read labels, of test cases


def test_second_stage_starts_from_the_first_stage_weights(train_config, tmp_path, monkeypatch):
    loaded = []
    original = LesionSegmenter.load_network
    monkeypatch.setattr(LesionSegmenter, "load_network", lambda m, p: (loaded.append(p), original(m, p)))
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


def rescale_case_spacing(root, image, label, factor):
    """Stretch one case's voxel spacing by ``factor`` in plane (image and label alike)."""
    for name in (image, label):
        path = root / name
        nifti = nib.load(str(path))
        affine = nifti.affine.copy()
        affine[:, :2] *= np.array([factor, factor, 1.0, 0.0])[:, None]
        nib.save(nib.Nifti1Image(np.asarray(nifti.dataobj), affine), str(path))


def test_mixed_spacings_train_after_resampling_and_predict_on_each_native_grid(tiny_dataset, config_on, tmp_path):

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    rescale_case_spacing(root, "imagesTr/hn_000.nii.gz", "labelsTr/hn_000.nii.gz", 1.5)
    rescale_case_spacing(root, "imagesTs/hn_007.nii.gz", "labelsTs/hn_007.nii.gz", 1.5)
    with pytest.raises(DatasetError, match=r"hn_000.nii.gz: spacing .* is 1.50x the median"):
        train(config_on(root, tmp_path / "native", ["loss=dice", *FAST, "data.target_spacing=null"]))
    spacing = nib.load(str(root / "imagesTr/hn_001.nii.gz")).header.get_zooms()[:3]
    resampled = [
        "loss=dice", *FAST, f"data.target_spacing=[{spacing[0]},{spacing[1]},{spacing[2]}]",
        "data.intensity=suv", "data.suv_scale=2.0",
    ]
    summary = train(config_on(root, tmp_path / "resampled", resampled))
    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["preprocessing"] == {
        "target_spacing": [float(s) for s in spacing], "intensity": "suv", "suv_scale": 2.0,
    }
    # The median of the training volumes as read: one of five is stretched, the others are not.
    assert np.allclose(checkpoint["hyper_parameters"]["training_spacing"], spacing)
    for case in ("hn_006", "hn_007"):  # masks on each test image's own grid
        mask = nib.load(str(tmp_path / "resampled" / "predictions" / f"{case}_mask.nii.gz"))
        image = nib.load(str(root / "imagesTs" / f"{case}.nii.gz"))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    # The default, target_spacing auto, resamples to that median without being told it.
    summary = train(config_on(root, tmp_path / "auto", ["loss=dice", *FAST]))
    checkpoint = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)
    assert np.allclose(checkpoint["hyper_parameters"]["preprocessing"]["target_spacing"], spacing, rtol=1e-6)
    mask = nib.load(str(tmp_path / "auto" / "predictions" / "hn_007_mask.nii.gz"))
    assert mask.shape == nib.load(str(root / "imagesTs" / "hn_007.nii.gz")).shape


def test_bad_evaluation_mirror_axes_are_refused_before_training(train_config, tmp_path):
    cfg = train_config(tmp_path, ["evaluate.mirror_axes=[0,3]", "trainer.fast_dev_run=1"])
    with pytest.raises(ValueError, match=r"mirror_axes \[0, 3\] needs auto or a list of distinct volume axes"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_evaluation_mirrors_the_test_scans_when_asked(train_config, tmp_path, monkeypatch):
    import wspet.evaluation.evaluate as evaluate

    seen = []
    real = evaluate.predict_mask
    monkeypatch.setattr(evaluate, "predict_mask", lambda *a, **kw: seen.append(kw["mirror_axes"]) or real(*a, **kw))
    train(train_config(tmp_path, ["evaluate.mirror_axes=[2,0]", "trainer.fast_dev_run=1"]))
    assert [tuple(axes) for axes in seen] == [(2, 0), (2, 0)]  # both test cases


@pytest.mark.parametrize("overrides, flips", [([], [0, 2]), (["data.flip_axes=[1]"], [1]), (["data.flip_probability=0"], [])])
def test_the_checkpoint_records_the_flips_training_saw(train_config, tmp_path, overrides, flips):
    summary = train(train_config(tmp_path, [*overrides, "trainer.fast_dev_run=1", "evaluate.split=none"]))
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["training_flips"] == flips


def test_the_checkpoint_records_the_axis_codes_of_the_training_volumes(tiny_dataset, config_on, tmp_path):
    root = tmp_path / "lps"
    shutil.copytree(tiny_dataset, root)
    for path in root.rglob("*.nii.gz"):  # the same arrays, stored with LPS axes instead of the phantoms' RAS
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine), path)
    summary = train(config_on(root, tmp_path / "run", ["trainer.fast_dev_run=1", "evaluate.split=none"]))
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)
    assert checkpoint["hyper_parameters"]["training_orientation"] == ["L", "P", "S"]


def test_deep_supervision_trains_its_heads_and_the_checkpoint_predicts(train_config, tmp_path):
    deep = ["loss=pseudo", "model.net.deep_supervision=true", "model.net.features=[4,8,16,32]"]
    summary = train(train_config(tmp_path, [*deep, "trainer.log_every_n_steps=1", *FAST]))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss_top" in header and "val/loss" in header
    weights = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert "net.auxiliary_heads.0.weight" in weights
    assert LesionSegmenter.from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").net.deep_supervision is True
    assert summary["test"]["n_cases"] == 2 and 0.0 <= summary["test"]["dice"] <= 1.0


def test_deep_supervision_not_a_boolean_names_the_value(train_config, tmp_path):
    with pytest.raises(ValueError, match=r"deep_supervision must be true or false, got 2"):
        train(train_config(tmp_path, ["loss=pseudo", "model.net.deep_supervision=2", *FAST]))


@pytest.mark.parametrize("overrides, message", [
    (["evaluate.threshold=1.5"], r"threshold 1.5 is not a probability in \[0, 1\]"),
    (["data.samples_per_volume=0"], "data.samples_per_volume=0 is not a whole number >= 1"),
    (["callbacks.checkpoint.selection_start=1.5"], r"selection_start 1.5 is not a share in \[0, 1\)"),
])
def test_a_setting_that_would_train_nothing_useful_is_refused_before_training(train_config, tmp_path, overrides, message):
    """A threshold of 1.5 gave empty test masks, and 0 samples per volume trained no step, each without a word."""
    with pytest.raises(ValueError, match=message):
        train(train_config(tmp_path, overrides))
    assert not (tmp_path / "checkpoints").exists()
