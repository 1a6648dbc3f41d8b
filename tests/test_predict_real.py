"""predict.py on a real whole-body DICOM PET scan (TCIA Soft-tissue-Sarcoma STS_001, CC BY 3.0).

Vallières M et al. (2015), doi:10.7937/K9/TCIA.2015.7GO2GSKS; Phys Med Biol 60(14):5471;
Clark K et al. (2013), J Digit Imaging 26(6):1045-1057. The data stay in ../shared/data;
skipped when that folder is absent.
"""

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from wspet.inference.measurements import LESION_COLUMNS, lesion_table

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
STS_001 = DATA / "sts-fdg-pet-dicom" / "STS_001" / "FDG_PET"
SERIES = STS_001 / "image"
RTSTRUCT = STS_001 / "mask" / "1-1.dcm"
CROPPED = DATA / "sts-fdg-pet" / "STS_001"
MAX_RSS_BYTES = 4 * 1024**3
PAPER_FEATURES = [16, 32, 64, 128, 256]

pytestmark = pytest.mark.skipif(not SERIES.is_dir(), reason=f"{SERIES} is absent (real data not available)")


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory) -> Path:
    """The paper-sized U-Net, untrained: enough for memory and outputs, not for lesions."""
    import lightning as L

    from wspet.model.module import LesionSegmenter

    torch.manual_seed(0)
    model = LesionSegmenter(net={"features": PAPER_FEATURES}, loss={"_target_": "wspet.losses.DiceLoss"})
    trainer = L.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "paper.ckpt"
    trainer.save_checkpoint(path)
    return path


def run_measured(command: list[str], log: Path, timeout: float) -> tuple[int, float, int]:
    """Run ``command``; return its exit status, wall seconds and peak RSS in bytes (its own, via wait4)."""
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        killer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return process.returncode, time.monotonic() - start, usage.ru_maxrss * 1024  # Linux: kB


@pytest.mark.slow
def test_whole_body_dicom_prediction_in_bounded_memory(paper_checkpoint, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, str(REPO / "predict.py"), f"ckpt={paper_checkpoint}", f"input={SERIES}", f"output={out}",
        "device=cpu", "save_suv=true",  # conf/predict.yaml's window, overlap and batch size
    ]
    status, seconds, peak = run_measured(command, tmp_path / "predict.log", timeout=900)
    log = (tmp_path / "predict.log").read_text()
    assert status == 0, log[-3000:]
    print(f"\nSTS_001 whole body (128x128x267), paper U-Net, default windows on CPU: "
          f"{seconds:.1f} s, peak RSS {peak / 1024**2:.0f} MiB")
    assert peak < MAX_RSS_BYTES, f"peak RSS {peak / 1024**3:.2f} GiB"

    mask, suv = nib.load(out / "STS_001_mask.nii.gz"), nib.load(out / "STS_001_suv.nii.gz")
    assert mask.shape == suv.shape == (128, 128, 267)
    assert np.allclose(mask.affine, suv.affine)
    assert nib.aff2axcodes(mask.affine) == ("L", "P", "S")
    # SUVmax of GTV_Mass, at its hottest voxel (the test below)
    assert suv.dataobj[73, 73, 28] == pytest.approx(7.9107, abs=1e-3)
    with (out / "STS_001_lesions.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["case", *LESION_COLUMNS]
    assert {row["case"] for row in rows} <= {"STS_001"}
    assert sum(int(row["n_voxels"]) for row in rows) == int(np.asarray(mask.dataobj).sum())
    assert (out / "STS_001_mip.png").read_bytes()[:4] == b"\x89PNG"


def test_reference_lesion_on_the_whole_body_grid_measures_as_on_the_cropped_one():
    """GTV_Mass rasterised on the whole-body SUV grid: the values a trained model is compared with.

    The cropped IBSI NIfTI (same patient, same grid up to the crop) gives the same lesion.
    """
    if not (RTSTRUCT.is_file() and (CROPPED / "PET_mask.nii.gz").is_file()):
        pytest.skip(f"{RTSTRUCT} or {CROPPED} absent")
    from wspet.datasets.dicom import read_pet_series
    from wspet.datasets.rtstruct import rasterise_roi

    pet = read_pet_series(SERIES)
    (whole,) = lesion_table(rasterise_roi(RTSTRUCT, "GTV_Mass", pet), pet.suv, pet.affine)
    image, label = nib.load(CROPPED / "PET_image.nii.gz"), nib.load(CROPPED / "PET_mask.nii.gz")
    (cropped,) = lesion_table(np.asarray(label.dataobj), image.get_fdata(dtype=np.float32), image.affine)
    print("\nSTS_001 GTV_Mass on the whole-body grid: " + ", ".join(
        f"{key} {whole[key]:.4g}" for key in ("n_voxels", "volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg")))
    assert whole["n_voxels"] == cropped["n_voxels"] == 5095
    for key in ("volume_ml", "suv_max", "suv_mean", "suv_peak", "tlg"):
        assert whole[key] == pytest.approx(cropped[key], rel=1e-3), key
    for axis in "xyz":
        assert whole[f"centroid_{axis}_mm"] == pytest.approx(cropped[f"centroid_{axis}_mm"], abs=0.01)
    assert (whole["volume_ml"], whole["suv_max"], whole["suv_mean"], whole["suv_peak"], whole["tlg"]) == pytest.approx(
        (366.0, 7.91, 2.56, 5.31, 935.0), rel=5e-3)  # docs/real_data.md
