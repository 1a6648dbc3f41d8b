"""Predict lesion masks for new PET scans: `python predict.py ckpt=... input=... output=...`.

`input` is a NIfTI file, a folder of them, a dataset folder or a DICOM PET series folder; see
docs/prediction.md for the outputs (mask, lesion CSV, MIP picture, SUV volume).
"""

import os
from pathlib import Path

os.environ.setdefault("WSPET_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from wspet.prediction import predict  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
