"""conf/data/sts.yaml end to end on real scans of several spacings (TCIA Soft-tissue-Sarcoma, CC BY 3.0).

Vallières M et al. (2015), doi:10.7937/K9/TCIA.2015.7GO2GSKS; Phys Med Biol 60(14):5471;
Clark K et al. (2013), J Digit Imaging 26(6):1045-1057. Skipped when ../shared/data is absent.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from wspet.datasets.convert import convert_dataset
from wspet.training.experiment import train

STS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sts-fdg-pet"
# In-plane spacings 4.69, 5.47 and 3.91 mm: without resampling the spacing check refuses this set.
CASES = ["STS_001", "STS_002", "STS_003", "STS_004", "STS_005", "STS_006"]

pytestmark = pytest.mark.skipif(not STS.is_dir(), reason=f"{STS} is absent (real data not available)")


def test_the_sts_config_trains_on_boxes_and_predicts_on_each_scans_grid(tmp_path, config_on):
    root = tmp_path / "sts"
    convert_dataset(STS, root, layout="sts", weak=True, cases=CASES, test_fraction=0.34, seed=0, log=lambda *_: None)
    spacings = {round(float(nib.load(str(p)).header.get_zooms()[0]), 2) for p in root.glob("images*/*.nii.gz")}
    assert len(spacings) > 1  # several scanners' spacings: resampling is what lets this train
    cfg = config_on(root, tmp_path / "run", [
        "data=sts", "loss=mdice_ms", "trainer.fast_dev_run=1", "data.volume_size=[64,64,128]",
        "evaluate.window=[32,32,32]", "evaluate.overlap=[0,0,0]",
    ])
    summary = train(cfg)
    hparams = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["preprocessing"] == {"target_spacing": [5.46875, 5.46875, 3.27], "intensity": "suv", "suv_scale": 1.0}
    assert summary["test"]["n_cases"] == 2 and 0.0 <= summary["test"]["dice"] <= 1.0
    for mask_path in (tmp_path / "run" / "predictions").glob("*_mask.nii.gz"):
        image = nib.load(str(root / "imagesTs" / mask_path.name.replace("_mask", "")))
        mask = nib.load(str(mask_path))
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
