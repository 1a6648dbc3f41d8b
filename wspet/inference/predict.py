"""``predict(cfg)``: masks, lesion tables and MIP pictures for new scans (what ``predict.py`` runs).

Inputs (``find_inputs``): a NIfTI file, a folder of NIfTI files, a wspet dataset folder (one
split), or a DICOM PET series folder (converted to SUV on the fly). Outputs per case, in the
output folder (``plan_jobs``): ``<case>_mask.nii.gz``, and as configured ``<case>_lesions.csv``,
``<case>_mip.png`` and, for DICOM inputs, ``<case>_suv.nii.gz``. A dataset split whose cases
have labels is also scored: ``metrics.csv`` (one row per labelled case and their mean, as in
training's test evaluation) and the same summary on stdout. See ``docs/prediction.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from wspet.data.box_prompts import Box, read_box_prompts
from wspet.data.check import validate_images
from wspet.datasets.dicom import read_pet_series
from wspet.data.format import NIFTI_SUFFIXES, Volume, case_name, load_image, load_label, read_dataset
from wspet.datasets.seg import SeriesGrid, read_seg_mask, series_frame_of_reference, write_seg
from wspet.inference.measurements import LESION_COLUMNS, describe, lesion_table
from wspet.inference.mip import save_mip_png
from wspet.inference.sliding_window import check_threshold, predict_mask
from wspet.io import publish, save_nifti, write_csv
from wspet.metrics.summary import METRIC_NAMES, case_metrics, format_table, mean_metrics
from wspet.model.flips import AUTO_MIRROR, check_mirror_axes
from wspet.model.module import LesionSegmenter
from wspet.model.precision import denormals_flushed
from wspet.postprocess.box_prompt import DEFAULT_FALLBACK, DEFAULT_UNION, check_fallback, fill_empty_boxes

log = logging.getLogger(__name__)

DICOM_SUFFIX = ".dcm"
# Files without the .dcm suffix are probed for the DICOM preamble: the first few only, so a
# folder of thousands of slices is recognised without reading them.
DICOM_PROBES = 3
LESION_CSV_COLUMNS = ("case", *LESION_COLUMNS)
METRICS_CSV = "metrics.csv"
METRICS_CSV_COLUMNS = ("case", *METRIC_NAMES)
SUMMARY_CASE = "mean"  # the case column of metrics.csv's last row
# Output names are "<stem>_lesions.csv" and the like; a file name may have 255 bytes at most, so a
# longer case name (a 300-character PatientID) is cut and made unique again by a hash of the whole.
MAX_STEM_BYTES = 120
# output_format: the mask as NIfTI only, or also as a DICOM SEG referencing a DICOM input series.
OUTPUT_FORMATS = ("nifti", "dicom-seg")


@dataclass(frozen=True)
class PredictionJob:
    """One case: its source (a NIfTI file or a DICOM series folder) and the files it writes.

    ``output`` is the mask; ``lesions``, ``mip`` and ``suv`` are None when not written.
    """

    name: str
    image: Path
    output: Path
    lesions: Path | None = None
    mip: Path | None = None
    suv: Path | None = None

    @property
    def is_dicom(self) -> bool:
        return self.image.is_dir()

    @property
    def outputs(self) -> list[Path]:
        """Every file this job writes, the mask first."""
        return [p for p in (self.output, self.suv, self.lesions, self.mip) if p is not None]


# --------------------------------------------------------------------------- inputs


def _visible_files(folder: Path) -> list[Path]:
    # Dot files are hidden, and temporaries of interrupted atomic writes are named ".<name>.*".
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def dicom_files(folder: Path) -> list[Path]:
    """The folder's ``.dcm`` files, or else its first files if they carry the DICOM preamble.

    Cheap: reads at most :data:`DICOM_PROBES` file headers (132 bytes each).
    """
    files = [p for p in _visible_files(folder) if not p.name.endswith(NIFTI_SUFFIXES)]
    named = [p for p in files if p.suffix.lower() == DICOM_SUFFIX]
    if named:
        return named
    probed = [p for p in files[:DICOM_PROBES] if pydicom.misc.is_dicom(p)]
    return files if probed else []


def _safe_name(text: str) -> str:
    """``text`` made a file name: runs of other characters than ``A-Za-z0-9._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._-")


def dicom_case_name(folder: Path, files: list[Path]) -> str:
    """The series' PatientID (made safe for file names), else the folder's name.

    Only the first readable file's header is read (PatientID is the same in every slice of a
    series; ``read_pet_series`` checks it is one series).
    """
    for path in files[:DICOM_PROBES]:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except (InvalidDicomError, OSError):
            continue
        name = _safe_name(str(header.get("PatientID", "") or ""))
        if name:
            return name
        break
    return _safe_name(folder.resolve().name) or "dicom"


def find_inputs(input_path: str | Path, split: str = "test") -> list[tuple[str, Path]]:
    """``(case, source)`` pairs for the input, a source being a NIfTI file or a DICOM series folder.

    - a NIfTI file (``.nii``/``.nii.gz``): one case named after the file;
    - a folder holding ``dataset.json``: the cases of ``split``;
    - a folder of NIfTI files: one case each;
    - a DICOM series folder (``.dcm`` files, or files with the DICOM preamble): one case, named by
      :func:`dicom_case_name`.

    Raises FileNotFoundError for a missing input, ValueError for a file that is not NIfTI (a
    single ``.dcm`` file: pass its folder), a folder with neither NIfTI nor DICOM files, or one
    with both.
    """
    path = Path(input_path)
    if path.is_file():
        if path.suffix.lower() == DICOM_SUFFIX or pydicom.misc.is_dicom(path):
            raise ValueError(f"{path}: a single DICOM file; pass the folder of its series ({path.parent})")
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise ValueError(f"{path}: not a NIfTI file (.nii or .nii.gz) nor a DICOM series folder")
        return [(case_name(path), path)]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input does not exist")
    if (path / "dataset.json").is_file():
        return [(case.name, case.image) for case in read_dataset(path).split(split)]
    nifti = [p for p in _visible_files(path) if p.name.endswith(NIFTI_SUFFIXES)]
    dicom = dicom_files(path)
    if nifti and dicom:
        raise ValueError(
            f"{path}: holds both NIfTI files ({len(nifti)}, e.g. {nifti[0].name}) and DICOM files "
            f"({len(dicom)}, e.g. {dicom[0].name}); point input at a folder of one kind"
        )
    if dicom:
        return [(dicom_case_name(path, dicom), path)]
    if not nifti:
        raise ValueError(f"{path}: no NIfTI files, DICOM files or dataset.json in this folder")
    return [(case_name(p), p) for p in nifti]


def find_labels(input_path: str | Path, split: str = "test") -> dict[str, Path | None] | None:
    """``{case: label or None}`` of ``split`` for a dataset folder input; None for any other input."""
    path = Path(input_path)
    if not (path.is_dir() and (path / "dataset.json").is_file()):
        return None
    return {case.name: case.label for case in read_dataset(path).split(split)}


def file_stem(name: str) -> str:
    """``name`` as the start of an output file name: cut to :data:`MAX_STEM_BYTES` plus a hash when longer."""
    if len(name.encode()) <= MAX_STEM_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    cut = name.encode()[: MAX_STEM_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{cut}-{digest}"


def plan_jobs(
    inputs: list[tuple[str, Path]],
    output: Path,
    overwrite: bool,
    lesions_csv: bool = True,
    mip_png: bool = True,
    save_suv: bool = False,
) -> list[PredictionJob]:
    """One job per input, naming every file it writes; check them all before anything is written.

    Refused (FileExistsError listing every problem): an output that is an input, an output two
    cases would write (inputs with the same case name), and an existing output unless
    ``overwrite``. ``save_suv`` applies to DICOM inputs only (a NIfTI input is the SUV already).
    """
    output = Path(output)
    sources = {image.resolve() for _, image in inputs}
    jobs, problems, planned = [], [], {}
    for name, image in inputs:
        stem = file_stem(name)
        job = PredictionJob(
            name,
            image,
            output / f"{stem}_mask.nii.gz",
            lesions=output / f"{stem}_lesions.csv" if lesions_csv else None,
            mip=output / f"{stem}_mip.png" if mip_png else None,
            suv=output / f"{stem}_suv.nii.gz" if save_suv and image.is_dir() else None,
        )
        for target in job.outputs:
            key = target.resolve()
            if key in sources:
                problems.append(f"{target}: would overwrite an input image")
            elif key in planned:
                problems.append(f"{target}: two inputs are case {name!r}: {planned[key]} and {image}")
            elif target.exists() and not overwrite:
                problems.append(f"{target}: exists (pass overwrite=true to replace it)")
            planned.setdefault(key, image)
        jobs.append(job)
    if problems:
        raise FileExistsError("refusing to write:\n  " + "\n  ".join(problems))
    return jobs


def plan_metrics(output: Path, labels: dict[str, Path | None] | None, overwrite: bool) -> Path | None:
    """``output/metrics.csv`` when some case has a label, else None; refused (FileExistsError) when
    it exists and not ``overwrite``, before anything is predicted."""
    if not labels or not any(labels.values()):
        return None
    target = Path(output) / METRICS_CSV
    if target.exists() and not overwrite:
        raise FileExistsError(f"refusing to write:\n  {target}: exists (pass overwrite=true to replace it)")
    return target


# --------------------------------------------------------------------------- model and volumes


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(checkpoint: str | Path, device: torch.device) -> LesionSegmenter:
    return LesionSegmenter.from_checkpoint(checkpoint, map_location=device).eval()


def load_models(ckpt: str | Path | Sequence | ListConfig, device: torch.device) -> list[LesionSegmenter]:
    """The model of ``ckpt``, or one per file of a list of them (an ensemble, averaged by ``predict_mask``).

    Every file is read (weights-only) before any scan is; ValueError for an empty list, a value
    that is not a path, or the same file twice (it would weigh double).
    """
    if OmegaConf.is_config(ckpt):
        ckpt = OmegaConf.to_object(ckpt)  # ckpt=[a,b] on the command line
    paths = [ckpt] if isinstance(ckpt, (str, Path)) else list(ckpt) if isinstance(ckpt, Sequence) else None
    if not paths or not all(isinstance(path, (str, Path)) and str(path) for path in paths):
        raise ValueError(f"ckpt={ckpt!r} is not a checkpoint path or a non-empty list of them")
    resolved = [Path(path).resolve() for path in paths]
    twice = sorted({str(path) for path, real in zip(paths, resolved) if resolved.count(real) > 1})
    if twice:
        raise ValueError(f"ckpt lists {', '.join(twice)} more than once; an ensemble takes each model once")
    models = [load_model(path, device) for path in paths]
    if len(models) > 1:
        log.info("ensemble of %d models: their probabilities are averaged (%s)", len(models),
                 ", ".join(str(path) for path in paths))
    return models


def warn_unknown_flips(models: Sequence[LesionSegmenter]) -> None:
    """Warn, naming the file, for each model that ``mirror_axes=auto`` will not mirror because its
    checkpoint predates ``training_flips``: the user asked for mirroring and would not get it."""
    for model in models:
        if model.hparams.get("training_flips") is None:
            log.warning("%s records no training flips (written before they were): mirror_axes=auto does not "
                        "mirror it; name the axes, e.g. mirror_axes=[0,2], to mirror it", model.checkpoint_path)


def load_volume(job: PredictionJob) -> Volume:
    """The job's PET in SUV: a NIfTI file as it is, a DICOM series converted (``read_pet_series``).

    A DICOM volume's ``path`` is its series folder.
    """
    if not job.is_dicom:
        return load_image(job.image)
    pet = read_pet_series(job.image)
    log.info("%s: DICOM %s -> SUV %s, spacing %s mm (weight %.1f kg, dose %.3g Bq, decay %s)",
             job.name, job.image, pet.suv.shape, tuple(round(s, 3) for s in pet.spacing),
             pet.weight_kg, pet.dose_bq, pet.decay_correction)
    return Volume(array=pet.suv, affine=pet.affine, path=job.image)


# --------------------------------------------------------------------------- outputs


def lesion_rows(name: str, mask: np.ndarray, image: Volume) -> list[dict]:
    """``lesion_table`` rows of ``mask`` on ``image`` (SUV), each starting with ``case``: ``name``."""
    return [{"case": name, **row} for row in lesion_table(mask, image.array, image.affine)]


def seg_output(job: PredictionJob) -> Path:
    """Where ``output_format=dicom-seg`` writes the job's DICOM SEG: ``<case>_seg.dcm`` beside its mask."""
    return job.output.with_name(job.output.name.removesuffix("_mask.nii.gz") + "_seg.dcm")


def check_output_format(output_format: str, jobs: list[PredictionJob], overwrite: bool) -> None:
    """Refuse, before any prediction: an unknown ``output_format``; ``dicom-seg`` for an input that is
    not a DICOM series (a SEG must reference the series it segments); an existing ``<case>_seg.dcm``
    unless ``overwrite``."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format={output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if output_format != "dicom-seg":
        return
    not_dicom = [str(job.image) for job in jobs if not job.is_dicom]
    if not_dicom:
        raise ValueError(f"output_format=dicom-seg needs DICOM series inputs; {not_dicom[:3]} are NIfTI "
                         "(a SEG references the instances of the series it segments)")
    existing = [str(seg_output(job)) for job in jobs if seg_output(job).exists()]
    if existing and not overwrite:
        raise FileExistsError("refusing to write:\n  " + "\n  ".join(
            f"{path}: exists (pass overwrite=true to replace it)" for path in existing))


def write_outputs(job: PredictionJob, image: Volume, mask: np.ndarray, overwrite: bool = False,
                  output_format: str = "nifti") -> list[Path]:
    """Write the job's mask and whichever of SUV, lesion CSV and MIP it names; return them.

    With ``output_format="dicom-seg"`` (a DICOM series input) the mask is also written as a DICOM
    SEG referencing the series, :func:`seg_output`, returned last.

    All are written into a hidden folder in the output folder first and published together
    (:func:`wspet.io.publish`) only when every one is whole: a case that fails half-way leaves
    nothing that would block a rerun. Without ``overwrite`` each is created exclusively, so a
    second run writing the same case fails naming the file and leaves the first run's files.
    """
    job.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=job.output.parent, prefix=".predict-"))
    try:
        staged = dataclasses.replace(job, **{
            field: staging / getattr(job, field).name
            for field in ("output", "lesions", "mip", "suv") if getattr(job, field) is not None
        })
        _write_staged(staged, image, mask)
        pairs = list(zip(staged.outputs, job.outputs))
        if output_format == "dicom-seg":
            pairs.append((_write_staged_seg(job, mask, staging), seg_output(job)))
        published: list[Path] = []
        try:
            for source, target in pairs:
                published.append(publish(source, target, overwrite))
        except FileExistsError:
            for path in published:  # this run's own links; the other run's files stay
                path.unlink()
            raise
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def seg_labels(seg: str | list | None, jobs: list[PredictionJob]) -> dict[str, tuple[Path, ...]] | None:
    """``{case: SEG files}`` for ``seg=FILE`` (or a list of files), None without ``seg``.

    Refused before any prediction (ValueError): ``seg`` with an input that is not one DICOM series
    (a SEG is read onto the grid of the series it segments), and a SEG file that does not exist.
    """
    if not seg:
        return None
    paths = tuple(Path(p) for p in ([seg] if isinstance(seg, (str, Path)) else seg))
    if len(jobs) != 1 or not jobs[0].is_dicom:
        raise ValueError(f"seg={[str(p) for p in paths]}: needs one DICOM series as input, not "
                         f"{[str(job.image) for job in jobs][:3]}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"seg: {missing} do not exist")
    return {jobs[0].name: paths}


def load_case_label(label: Path | tuple[Path, ...], image: Volume, job: PredictionJob,
                    segments: list | None = None) -> np.ndarray:
    """A case's label on ``image``'s grid: a NIfTI label (``load_label``) or, for a DICOM series, the
    union of the chosen ``segments`` of its SEG file(s) (``read_seg_mask``), (I, J, K) uint8."""
    if not isinstance(label, tuple):
        return load_label(label, image)
    grid = SeriesGrid(image.affine, tuple(image.array.shape), series_frame_of_reference(job.image), job.image)
    return read_seg_mask(label, grid, None if segments is None else list(segments))


def _write_staged_seg(job: PredictionJob, mask: np.ndarray, staging: Path) -> Path:
    """The job's mask (I, J, K, on its series' grid) as a DICOM SEG in ``staging``."""
    if not job.is_dicom:
        raise ValueError(f"{job.image}: output_format=dicom-seg needs a DICOM series input, not a NIfTI file")
    return write_seg(mask, job.image, staging / seg_output(job).name, label="lesion", automatic=True)


def _write_staged(job: PredictionJob, image: Volume, mask: np.ndarray) -> list[Path]:
    """Write the files of ``job`` (paths in the staging folder).

    The CSV has the columns :data:`LESION_CSV_COLUMNS`, one row per lesion, a header alone for
    an empty mask (``write_lesion_csv`` would drop the ``case`` column then).
    """
    written = [save_nifti(mask.astype(np.uint8), image.affine, job.output, like=image.path)]
    if job.suv is not None:
        written.append(save_nifti(image.array, image.affine, job.suv))
    rows = lesion_rows(job.name, mask, image) if job.lesions is not None or job.mip is not None else []
    if rows:
        log.info("%s: %d lesion(s), %.1f ml in all", job.name, len(rows), sum(row["volume_ml"] for row in rows))
    for row in rows:  # an untrained or poor model can make thousands
        log.debug("%s %s", job.name, describe(row))
    if job.lesions is not None:
        written.append(write_csv(job.lesions, rows, columns=LESION_CSV_COLUMNS))
    if job.mip is not None:
        title = f"{job.name}: {len(rows)} lesion(s), {sum(row['volume_ml'] for row in rows):.1f} ml"
        written.append(save_mip_png(image.array, mask, image.affine, job.mip, title=title))
    return written


def summary_row(rows: list[dict]) -> dict:
    """The mean of each metric over ``rows`` (:func:`wspet.metrics.summary.mean_metrics`), as a metrics.csv row."""
    means = mean_metrics(rows)
    return {"case": SUMMARY_CASE, **{column: means[column] for column in METRIC_NAMES}}


def write_metrics(path: Path, rows: list[dict], overwrite: bool = False) -> Path:
    """``path`` (metrics.csv): ``rows`` (``case`` and :data:`METRIC_NAMES`) then :func:`summary_row`.

    Written whole in a hidden folder beside it, then published as the case files are: created
    exclusively unless ``overwrite`` (FileExistsError naming it if another run wrote it meanwhile).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".predict-"))
    try:
        staged = write_csv(staging / path.name, [*rows, summary_row(rows)], METRICS_CSV_COLUMNS)
        return publish(staged, path, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def metrics_summary(rows: list[dict], unscored: list[str]) -> str:
    """The terminal summary: per-case Dice and UDE with their mean, then every metric's mean,
    and the cases predicted but not scored (no label)."""
    lines = []
    if rows:
        mean = summary_row(rows)
        lines += [
            format_table(rows, f"Metrics of {len(rows)} labelled case(s):"),
            f"mean of {len(rows)} case(s): Dice {mean['dice']:.3f}, UDE {mean['ude_mm']:.2f} mm, "
            f"HD95 {mean['hd95_mm']:.2f} mm, lesions per case found {mean['lesions_found']:.2f}, "
            f"missed {mean['lesions_missed']:.2f}, false {mean['lesions_false']:.2f}, "
            f"empty predictions {mean['pred_empty']:.2f}",
        ]
    if unscored:
        shown = ", ".join(unscored[:10]) + (", ..." if len(unscored) > 10 else "")
        lines.append(f"{len(unscored)} case(s) have no label: predicted, not scored ({shown})")
    return "\n".join(lines)


def box_prompts(path: str | None, jobs: list[PredictionJob]) -> dict[str, list[Box]] | None:
    """The boxes of every job's case from the ``boxes`` file, or None without one.

    Refused before any prediction (ValueError naming the file): a case of the input that the file
    gives no boxes for. Cases of the file that are not inputs are ignored.
    """
    if not path:
        return None
    prompts = read_box_prompts(path)
    missing = [job.name for job in jobs if job.name not in prompts]
    if missing:
        raise ValueError(f"{path}: no boxes for case(s) {missing[:10]} (the file has {sorted(prompts)[:10]})")
    return prompts


def prompted_mask(mask: np.ndarray, image: Volume, boxes: list[Box], job: PredictionJob, source: str,
                  fallback: str = DEFAULT_FALLBACK, union: bool = DEFAULT_UNION) -> np.ndarray:
    """``mask`` kept inside ``boxes``, a box the model left empty (every box with ``union``, the default) segmented by
    ``fallback`` (:func:`wspet.postprocess.box_prompt.fill_empty_boxes`), each empty box logged as a warning; a box
    outside the scan is refused naming the box file, case and box."""
    try:
        kept, filled = fill_empty_boxes(mask, image.array, boxes, fallback, union=union)
    except ValueError as error:
        raise ValueError(f"{source}: case {job.name!r} ({job.image}): {error}") from None
    for index in filled:
        log.warning("%s: the model found no lesion in box %s of %s; segmented it by box_fallback=%s instead",
                    job.name, list(boxes[index]), source, fallback)
    return kept


def predict(cfg: DictConfig) -> list[Path]:
    """Predict every input of ``cfg`` and write its outputs; return every written path, case by case,
    then ``metrics.csv`` when some case was scored.

    NIfTI inputs are validated (``validate_images``) before the model is loaded; a DICOM series is
    checked as it is read (``read_pet_series``). The cases of a dataset split that have a label are
    scored on the final mask (after ``postprocess`` and ``boxes``) with
    :func:`wspet.metrics.case_metrics`; the summary (:func:`metrics_summary`) goes to stdout.
    """
    with denormals_flushed():
        return _predict(cfg)


def _predict(cfg: DictConfig) -> list[Path]:
    output = Path(cfg.output)
    jobs = plan_jobs(find_inputs(cfg.input, cfg.split), output, cfg.overwrite,
                     lesions_csv=cfg.lesions_csv, mip_png=cfg.mip_png, save_suv=cfg.save_suv)
    labels = seg_labels(cfg.get("seg"), jobs) or find_labels(cfg.input, cfg.split)
    metrics_csv = plan_metrics(output, labels, cfg.overwrite)
    output_format = cfg.get("output_format", "nifti")
    check_output_format(output_format, jobs, cfg.overwrite)
    nifti = [job.image for job in jobs if not job.is_dicom]
    if nifti:
        report = validate_images(nifti)
        for warning in report.warnings:
            log.warning(warning)
        report.raise_if_problems()
    prompts = box_prompts(cfg.get("boxes"), jobs)
    fallback = check_fallback(cfg.get("box_fallback", DEFAULT_FALLBACK))
    union = cfg.get("box_union", DEFAULT_UNION)
    if not isinstance(union, bool):
        raise ValueError(f"box_union={union!r} is not true or false")
    mirror_axes = check_mirror_axes(cfg.get("mirror_axes", ()))
    check_threshold(cfg.threshold)
    models = load_models(cfg.ckpt, choose_device(cfg.device))
    if mirror_axes == AUTO_MIRROR:
        warn_unknown_flips(models)
    postprocess = instantiate(cfg.postprocess.fn) if cfg.postprocess.get("fn") else None
    progress = bool(cfg.get("progress", True))
    written, scores = [], []
    for job in tqdm(jobs, desc="predicting", unit="scan", disable=not progress):
        image = load_volume(job)
        for model in models:  # before any big allocation
            model.preprocessing.check_grid(image.array.shape, image.affine, job.image)
        label_path = (labels or {}).get(job.name)
        # a bad label fails before the prediction
        label = None if label_path is None else load_case_label(label_path, image, job, cfg.get("segments"))
        try:
            mask = predict_mask(models, image, postprocess, cfg.window, cfg.overlap, cfg.threshold, cfg.batch_size,
                                progress=progress, mirror_axes=mirror_axes)
        except ValueError as error:  # e.g. a scan that resampling leaves constant: name the scan
            raise ValueError(f"{job.image}: {error}") from None
        if prompts is not None:
            mask = prompted_mask(mask, image, prompts[job.name], job, cfg.boxes, fallback, union)
        written += write_outputs(job, image, mask, overwrite=cfg.overwrite, output_format=output_format)
        log.info("%s: %d lesion voxels -> %s", job.name, int(mask.sum()), job.output)
        if label is not None:
            scores.append({"case": job.name, **case_metrics(mask, label, image.spacing)})
    if metrics_csv is not None:
        written.append(write_metrics(metrics_csv, scores, overwrite=cfg.overwrite))
    if labels is not None:
        print(metrics_summary(scores, [job.name for job in jobs if labels.get(job.name) is None]))
    return written
