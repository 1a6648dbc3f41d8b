"""``predict(cfg)``: masks for new scans from a checkpoint (what ``predict.py`` runs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from wspet.data.check import validate_images
from wspet.data.format import case_name, load_image, read_dataset
from wspet.inference import predict_mask, save_mask
from wspet.module import LesionSegmenter

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PredictionJob:
    name: str
    image: Path
    output: Path


def find_inputs(input_path: str | Path, split: str = "test") -> list[tuple[str, Path]]:
    """``(case, image path)`` for a NIfTI file, a folder of them, or a dataset folder's split."""
    path = Path(input_path)
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise ValueError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        return [(case_name(path), path)]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input does not exist")
    if (path / "dataset.json").is_file():
        return [(case.name, case.image) for case in read_dataset(path).split(split)]
    # Dot files are hidden, and temporaries of interrupted atomic writes are named ".<name>.*".
    files = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{path}: no NIfTI files and no dataset.json in this folder")
    return [(case_name(p), p) for p in files]


def plan_jobs(inputs: list[tuple[str, Path]], output: Path, overwrite: bool) -> list[PredictionJob]:
    """One job per input; refuse to write over an input, or over a mask unless ``overwrite``."""
    sources = {image.resolve() for _, image in inputs}
    jobs, problems = [], []
    for name, image in inputs:
        target = output / f"{name}_mask.nii.gz"
        if target.resolve() in sources:
            problems.append(f"{target}: would overwrite an input image")
        elif target.exists() and not overwrite:
            problems.append(f"{target}: exists (pass overwrite=true to replace it)")
        jobs.append(PredictionJob(name, image, target))
    if problems:
        raise FileExistsError("refusing to write:\n  " + "\n  ".join(problems))
    return jobs


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(checkpoint: str | Path, device: torch.device) -> LesionSegmenter:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint does not exist")
    return LesionSegmenter.load_from_checkpoint(checkpoint, map_location=device).eval()


def predict(cfg: DictConfig) -> list[Path]:
    """Write ``<output>/<case>_mask.nii.gz`` for every input; return the written paths."""
    output = Path(cfg.output)
    jobs = plan_jobs(find_inputs(cfg.input, cfg.split), output, cfg.overwrite)
    report = validate_images([job.image for job in jobs])
    for warning in report.warnings:
        log.warning(warning)
    report.raise_if_problems()
    model = load_model(cfg.ckpt, choose_device(cfg.device))
    postprocess = instantiate(cfg.postprocess.fn) if cfg.postprocess.get("fn") else None
    written = []
    for job in tqdm(jobs, desc="predicting", unit="scan"):
        image = load_image(job.image)
        mask = predict_mask(model, image, postprocess, cfg.window, cfg.overlap, cfg.threshold, cfg.batch_size)
        written.append(save_mask(mask, image, job.output))
        log.info("%s: %d lesion voxels -> %s", job.name, int(mask.sum()), job.output)
    return written
