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
