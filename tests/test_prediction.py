"""predict.py: masks with the input's affine, every input form, refusal to overwrite."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from wspet.module import LesionSegmenter
from wspet.prediction import find_inputs, plan_jobs, predict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import lightning as L

    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": [4, 8, 16]}, loss={"_target_": "wspet.losses.DiceLoss"})
    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def scan(tmp_path) -> Path:
    affine = np.array([[-4.0, 0, 0, 100.0], [0, -4.0, 0, 80.0], [0, 0, 3.27, -500.0], [0, 0, 0, 1]])
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(20, 24, 18)).astype(np.float32)
    path = tmp_path / "inputs" / "patient 1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image, affine), path)
    return path


def predict_config(checkpoint, input_path, output, **extra):
    return OmegaConf.create({
        "ckpt": str(checkpoint), "input": str(input_path), "split": "test", "output": str(output),
        "overwrite": False, "window": [16, 16, 16], "overlap": [4, 4, 4], "batch_size": 2,
        "threshold": 0.5, "device": "cpu", "postprocess": {"name": "none", "fn": None}, **extra,
    })


def test_mask_keeps_the_input_affine_and_shape(checkpoint, scan, tmp_path):
    written = predict(predict_config(checkpoint, scan, tmp_path / "out"))
    assert [p.name for p in written] == ["patient 1_mask.nii.gz"]
    mask = nib.load(written[0])
    source = nib.load(scan)
    assert mask.shape == source.shape
    assert np.allclose(mask.affine, source.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_refuses_to_overwrite_unless_asked(checkpoint, scan, tmp_path):
    cfg = predict_config(checkpoint, scan, tmp_path / "out")
    predict(cfg)
    with pytest.raises(FileExistsError, match="exists"):
        predict(cfg)
    cfg.overwrite = True
    assert len(predict(cfg)) == 1


def test_refuses_to_write_over_an_input(tmp_path):
    source = tmp_path / "a_mask.nii.gz"
    source.write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite an input"):
        plan_jobs([("a", source)], tmp_path, overwrite=True)


def test_inputs_from_a_folder_and_a_dataset(tiny_dataset, scan, tmp_path):
    assert [name for name, _ in find_inputs(scan.parent)] == ["patient 1"]
    assert [name for name, _ in find_inputs(tiny_dataset, "test")] == ["hn_006", "hn_007"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no NIfTI files"):
        find_inputs(empty)


def test_predict_script_runs_as_documented(checkpoint, scan, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), f"ckpt={checkpoint}", f"input={scan}", f"output={tmp_path / 'cli'}",
         "window=[16,16,16]", "overlap=[4,4,4]", "device=cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cli" / "patient 1_mask.nii.gz").is_file()
    assert "predicting" in result.stderr  # the progress bar
