"""The GPU path end to end: every loss trains under ``precision=auto`` on CUDA, and prediction there
matches prediction on the CPU.

The rest of the suite pins ``trainer.accelerator=cpu``, so on a GPU machine these are the tests that
use the GPU; elsewhere (CI, 2-core CPU machines) they are skipped. On a GPU machine:
``python -m pytest tests/training/test_gpu.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from wspet.inference.sliding_window import predict_probabilities
from wspet.model.module import LesionSegmenter
from wspet.training.experiment import train

CONF = Path(__file__).resolve().parents[2] / "conf"

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LOSSES = sorted(path.stem for path in (CONF / "loss").glob("*.yaml"))
GPU = ["trainer.accelerator=gpu", "trainer.precision=auto", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_and_evaluates_on_the_gpu(train_config, tmp_path, loss):
    summary = train(train_config(tmp_path, [f"loss={loss}", *GPU]))
    assert summary["precision"] == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    assert math.isfinite(summary["validation"]["value"])
    assert summary["test"]["n_cases"] == 2 and 0.0 <= summary["test"]["dice"] <= 1.0


def test_deep_supervision_trains_on_the_gpu(train_config, tmp_path):
    deep = ["loss=pseudo", "model.net.deep_supervision=true", "model.net.features=[4,8,16,32]"]
    summary = train(train_config(tmp_path, [*deep, *GPU]))
    assert math.isfinite(summary["validation"]["value"])


def test_prediction_on_the_gpu_matches_the_cpu(train_config, tiny_dataset, tmp_path):
    summary = train(train_config(tmp_path, ["loss=pseudo", *GPU, "evaluate.split=none"]))
    scan = next((tiny_dataset / "imagesTs").glob("*.nii.gz"))
    volume = nib.load(scan)
    image, affine = np.asarray(volume.dataobj, dtype=np.float32), volume.affine
    on = {device: LesionSegmenter.from_checkpoint(summary["checkpoint"], map_location=device).eval() for device in ("cpu", "cuda")}
    with torch.no_grad():
        cpu = predict_probabilities(on["cpu"], image, affine, precision="32-true")
        cuda32 = predict_probabilities(on["cuda"], image, affine, precision="32-true")
        cuda_auto = predict_probabilities(on["cuda"], image, affine, precision="auto")
    assert cpu.shape == cuda32.shape == cuda_auto.shape == image.shape
    assert np.abs(cuda32 - cpu).max() < 1e-2  # cuDNN may use TF32 for float32 convolutions
    assert np.abs(cuda_auto - cpu).max() < 0.1  # bf16 keeps 8 bits of mantissa


def test_self_training_relabels_and_trains_on_the_gpu(train_config, tmp_path):
    summary = train(train_config(tmp_path, ["loss=pseudo", *GPU, "self_training.rounds=1", "evaluate.split=none"]))
    assert list(summary["stages"]) == ["pseudo_round0", "pseudo"]
    assert len(list((tmp_path / "self_training_1_labels").glob("*.nii.gz"))) == 6


def test_predict_with_boxes_on_the_gpu_writes_what_the_cpu_writes(train_config, tiny_dataset, tmp_path):
    from omegaconf import OmegaConf

    from wspet.inference.predict import predict

    summary = train(train_config(tmp_path / "run", ["loss=pseudo", *GPU, "evaluate.split=none"]))
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"hn_006": [[4, 4, 4, 20, 20, 20]], "hn_007": [[8, 8, 8, 28, 28, 28]]}')
    masks = {}
    for device in ("cpu", "cuda"):
        cfg = OmegaConf.create({
            "ckpt": summary["checkpoint"], "input": str(tiny_dataset), "split": "test",
            "output": str(tmp_path / device), "overwrite": False, "lesions_csv": True, "mip_png": False,
            "save_suv": False, "window": [32, 32, 32], "overlap": [0, 0, 0], "batch_size": 2, "threshold": 0.5,
            "device": device, "boxes": str(boxes), "postprocess": {"name": "none", "fn": None},
        })
        masks[device] = [np.asarray(nib.load(path).dataobj) > 0 for path in predict(cfg) if path.name.endswith("_mask.nii.gz")]
    assert len(masks["cuda"]) == 2
    for cpu, cuda in zip(masks["cpu"], masks["cuda"]):
        assert np.mean(cpu != cuda) < 0.01  # bf16 on the GPU against the CPU's precision=auto
