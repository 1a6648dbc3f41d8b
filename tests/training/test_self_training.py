"""Self-training rounds of loss=pseudo: labels from the model's own predictions inside the boxes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from wspet.data.boxes import boxes_to_mask
from wspet.data.datamodule import PetDataModule
from wspet.data.format import DatasetError, read_dataset
from wspet.data.pseudo_labels import BACKGROUND, IGNORE, LESION, pseudo_label
from wspet.model.module import LesionSegmenter
from wspet.training.experiment import train
from wspet.training.self_training import labels_from_probabilities, restore_empty_boxes

FAST = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "loss=pseudo"]


def test_labels_keep_confident_predictions_inside_the_boxes_only():
    probs = np.array([[[0.95, 0.6, 0.4, 0.1, 0.95]]], dtype=np.float32)
    box = np.array([[[True, True, True, True, False]]])
    labels = labels_from_probabilities(probs, box, band=0.2)
    assert labels.tolist() == [[[LESION, IGNORE, IGNORE, BACKGROUND, BACKGROUND]]]
    assert labels_from_probabilities(probs, box, band=0.0).tolist() == [[[LESION, LESION, BACKGROUND, BACKGROUND, BACKGROUND]]]
    with pytest.raises(ValueError, match="band 0.5"):
        labels_from_probabilities(probs, box, band=0.5)


def test_a_box_the_model_left_empty_keeps_its_first_pseudo_label():
    image = np.ones((16, 16, 16), np.float32)
    image[3:6, 3:6, 3:6] = 8.0
    image[10:13, 10:13, 10:13] = 5.0
    boxes = [[1, 1, 1, 8, 8, 8], [8, 8, 8, 15, 15, 15]]
    probs = np.zeros(image.shape, np.float32)
    probs[3:6, 3:6, 3:6] = 0.9  # the model found the first lesion, not the second
    labels = labels_from_probabilities(probs, boxes_to_mask(boxes, image.shape) > 0, band=0.2)
    before = labels.copy()
    filled, which = restore_empty_boxes(labels, image, boxes, {"method": "otsu", "band": 0.1})
    assert which == [1]
    assert np.array_equal(filled[:8, :8, :8], before[:8, :8, :8])  # the model's labels, kept
    expected = pseudo_label(image, [boxes[1]], method="otsu", band=0.1)[8:15, 8:15, 8:15]
    assert np.array_equal(filled[8:15, 8:15, 8:15], expected) and (expected == LESION).sum() > 0
    assert np.array_equal(labels, before)  # the input is not modified


def test_a_round_relabels_every_training_case_and_trains_from_its_weights(train_config, tmp_path, tiny_dataset, monkeypatch):
    loaded = []
    original = LesionSegmenter.load_network
    monkeypatch.setattr(LesionSegmenter, "load_network", lambda m, p: (loaded.append(str(p)), original(m, p)))
    summary = train(train_config(tmp_path, [*FAST, "self_training.rounds=1"]))
    assert loaded == [str(tmp_path / "self_training_0" / "checkpoints" / "best.ckpt")]
    assert list(summary["stages"]) == ["pseudo_round0", "pseudo"]
    assert (tmp_path / "self_training_0" / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "test_metrics.csv").is_file()
    index = read_dataset(tiny_dataset)
    written = sorted(p.name for p in (tmp_path / "self_training_1_labels").iterdir())
    assert written == sorted(f"{case.name}.nii.gz" for case in index.training)
    for case in index.training:
        labels = np.asarray(nib.load(str(tmp_path / "self_training_1_labels" / f"{case.name}.nii.gz")).dataobj)
        box = boxes_to_mask(case.boxes, labels.shape) > 0
        assert set(np.unique(labels)) <= {BACKGROUND, LESION, IGNORE}
        assert not (labels[~box] != BACKGROUND).any()  # nothing outside the boxes
    rounds = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert rounds["pseudo_round0"]["steps"] > 0 and rounds["pseudo"]["steps"] > 0


def test_rounds_are_ignored_for_losses_that_do_not_train_on_pseudo_labels(train_config, tmp_path, caplog):
    summary = train(train_config(tmp_path, ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "loss=fs", "self_training.rounds=2"]))
    assert list(summary["stages"]) == ["fs"]
    assert "self_training.rounds=2 ignored" in caplog.text


def test_the_data_module_reads_pseudo_labels_from_a_folder_and_refuses_bad_values(tiny_dataset, tmp_path):
    index = read_dataset(tiny_dataset)
    for case in index.training:
        image = nib.load(str(case.image))
        labels = np.zeros(image.shape, dtype=np.uint8)
        labels[10:14, 10:14, 10:14] = LESION
        labels[9, 9, 9] = IGNORE
        nib.save(nib.Nifti1Image(labels, image.affine), str(tmp_path / f"{case.name}.nii.gz"))
    module = PetDataModule(tiny_dataset, supervision="pseudo", volume_size=(32, 32, 32), patch_size=(16, 16, 16),
                           val_fraction=0.34, pseudo_label_dir=tmp_path)
    module.setup("fit")
    pseudo = module.train_subjects[0]["pseudo"].data
    assert int((pseudo == LESION).sum()) == 64 and int((pseudo == IGNORE).sum()) == 1
    bad = tmp_path / f"{index.training[0].name}.nii.gz"
    image = nib.load(str(index.training[0].image))
    nib.save(nib.Nifti1Image(np.full(image.shape, 3, dtype=np.uint8), image.affine), str(bad))
    with pytest.raises(DatasetError, match=r"label values \[3\] are not in 0..2"):
        PetDataModule(tiny_dataset, supervision="pseudo", volume_size=(32, 32, 32), patch_size=(16, 16, 16),
                      val_fraction=0.34, pseudo_label_dir=tmp_path).setup("fit")
