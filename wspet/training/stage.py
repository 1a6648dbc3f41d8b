"""One training stage: build its data and model from the config, fit, keep the best checkpoint, evaluate it.

A run trains one stage, or two for the paper's weak losses (the box-Dice stage first; see
:mod:`wspet.training.experiment`). Each stage has its folder, its loggers, its ``stage.json`` record
(so a resumed run never trains a finished stage again) and may come from the stage cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from wspet.data.datamodule import PetDataModule
from wspet.data.format import parse_json, read_dataset
from wspet.evaluation.evaluate import evaluate_cases
from wspet.io import atomic_path, write_text
from wspet.model.checkpoint import load_checkpoint
from wspet.model.module import LesionSegmenter
from wspet.training.callbacks import ValidationHistory, build_callbacks
from wspet.training.checkpointing import LAST, SaveOnSignal, launch_rank_is_zero, resume_checkpoint, stage_checkpoints
from wspet.training.collapse import CollapseGuard
from wspet.training.convergence import convergence_problems
from wspet.training.loggers import build_loggers, finish_loggers, log_test_metrics
from wspet.training.resume import read_stage_record, stopped_by_signal, write_stage_record
from wspet.training.stage_cache import StageCache, stage_key
from wspet.training.stage_result import StageResult
from wspet.training.trainer import build_trainer

log = logging.getLogger(__name__)

# The paper's stage-1 loss, L_Dice on the box masks: it learns the boxes, so predicting them is its goal.
WEAK_STAGE_LOSS = "dice"


def build_datamodule(cfg: DictConfig) -> PetDataModule:
    """The ``conf/data`` data module for this stage's loss (its supervision and pseudo-label settings)."""
    pseudo_labels = cfg.loss.get("pseudo_labels")
    return built(cfg.data, supervision=cfg.loss.supervision, pseudo_labels=pseudo_labels, _convert_="all")


def build_model(cfg: DictConfig, init_from: str | None, data: PetDataModule) -> LesionSegmenter:
    """The ``conf/model`` module with this stage's loss, the data's preprocessing and, if given, initial weights."""
    return built(
        cfg.model,
        loss=cfg.loss.module,
        supervision=cfg.loss.supervision,
        preprocessing=data.preprocessing.as_dict(),
        training_spacing=data.median_spacing(),
        training_flips=list(data.flip_axes) if data.flip_probability > 0 else [],
        training_orientation=data.orientation(),
        init_from=init_from,
        _recursive_=False,
    )


def built(node: DictConfig, **arguments):
    """``instantiate(node, **arguments)``; a bad value's own error, not Hydra's wrapper around it.

    The classes built here raise ValueError or FileNotFoundError naming the setting, file and value;
    Hydra would wrap it in an InstantiationException whose message starts with Hydra's words.
    """
    try:
        return instantiate(node, **arguments)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ValueError, OSError)):
            raise error.__cause__ from None
        raise


def fit_and_evaluate(
    cfg: DictConfig,
    stage_dir: Path,
    init_from: str | None,
    name: str,
    resuming: bool = False,
    ckpt_path: Path | None = None,
) -> StageResult:
    """Train one stage in ``stage_dir`` and evaluate its best checkpoint on global rank 0.

    ``resuming``: a stage recorded as trained (``stage.json``) is not trained again, only evaluated if
    that was cut short; otherwise training continues from ``ckpt_path`` or the stage's ``last.ckpt``.
    Other DDP ranks train, then return a result without test rows and write nothing.
    """
    result = read_stage_record(stage_dir) if resuming else None
    loggers = []
    try:
        if result is not None:
            log.info("stage '%s' was trained before (%s); not training it again", name, result.checkpoint)
        else:
            if resuming and ckpt_path is None:
                ckpt_path = resume_checkpoint(stage_dir)
            loggers = build_loggers(cfg, stage_dir, resumed=ckpt_path is not None)
            result = None if ckpt_path else cached_stage(cfg, stage_dir, init_from, name)
            if result is None:
                result = fit_stage(cfg, stage_dir, init_from, name, ckpt_path, loggers)
                remember_stage(cfg, init_from, result)
        if not launch_rank_is_zero():
            return result
        write_stage_record(stage_dir, result)
        if not result.evaluated:
            if cfg.evaluate.split != "none":
                result.test_rows = evaluate_stage(cfg, result.checkpoint, stage_dir)
                loggers = loggers or build_loggers(cfg, stage_dir, resumed=True)
                log_test_metrics(loggers, result, stage_dir / "overlays.png")
            result.evaluated = True
            write_stage_record(stage_dir, result)
        return result
    finally:
        finish_loggers(loggers)


def cached_stage(cfg: DictConfig, stage_dir: Path, init_from: str | None, name: str) -> StageResult | None:
    """The stage from ``cfg.stage_cache`` when an identical one was trained before, else None."""
    if not cfg.get("stage_cache"):
        return None
    key = stage_key(cfg, init_from)
    cached = StageCache(cfg.stage_cache).lookup(key)
    if cached is None:
        return None
    try:
        load_checkpoint(cached)  # a planted or foreign entry is refused before anything reads it
        collapsed = _cached_collapse_flag(cached.with_name("stage.json"))
    except (ValueError, OSError) as error:
        log.warning("stage '%s': not reusing cached stage %s, training it again: %s", name, key, error)
        return None
    log.info("stage '%s': identical to cached stage %s; reusing %s", name, key, cached)
    target = stage_dir / "checkpoints" / "best.ckpt"
    if launch_rank_is_zero():
        with atomic_path(target) as tmp:
            shutil.copyfile(cached, tmp)
    return StageResult(name=name, checkpoint=target, collapsed=collapsed)


def _cached_collapse_flag(path: Path) -> bool:
    """Whether the cached stage collapsed, from its ``stage.json``; ValueError naming the file if unreadable."""
    try:
        record = parse_json(path.read_bytes())
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("collapsed"), bool):
        raise ValueError(f"{path}: expected {{\"collapsed\": true | false}}, got {str(record)[:80]}")
    return record["collapsed"]


def remember_stage(cfg: DictConfig, init_from: str | None, result: StageResult) -> None:
    if cfg.get("stage_cache") and launch_rank_is_zero():
        stored = StageCache(cfg.stage_cache).store(stage_key(cfg, init_from), result.checkpoint)
        write_text(stored.with_name("stage.json"), json.dumps({"collapsed": result.collapsed}) + "\n")


def fit_stage(
    cfg: DictConfig, stage_dir: Path, init_from: str | None, name: str, ckpt_path: Path | None, loggers: list
) -> StageResult:
    """Fit one stage (from ``ckpt_path`` if given): its best checkpoint and whether it collapsed."""
    if launch_rank_is_zero():
        stage_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, init_from, datamodule)
    checkpoint, latest = stage_checkpoints(stage_dir / "checkpoints", cfg.callbacks.checkpoint)
    guard = CollapseGuard(**cfg.callbacks.collapse_guard)
    saver = SaveOnSignal(stage_dir / "checkpoints" / LAST)
    callbacks = build_callbacks(cfg, checkpoint, guard, saver) + ([latest] if latest else [])
    trainer = build_trainer(cfg, callbacks, loggers, stage_dir)
    if ckpt_path is not None:
        log.info("stage '%s': resuming from %s", name, ckpt_path)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:
        stopped_by_signal(saver, Path(cfg.paths.output_dir))
    seconds = time.perf_counter() - start
    rate = trainer.global_step / seconds if ckpt_path is None and trainer.global_step else None
    log.info("stage '%s': %d steps in %.0f s%s", name, trainer.global_step, seconds,
             f" ({rate:.2f} steps/s, validation included)" if rate else "")
    best = checkpoint.best_model_path or (latest.best_model_path if latest else "")
    if not best:  # fast_dev_run, limit_* runs and runs ended before callbacks.checkpoint.selection_start save none
        best = stage_dir / "checkpoints" / LAST
        trainer.save_checkpoint(best)
    history = next(c for c in callbacks if isinstance(c, ValidationHistory)).steps
    problems = convergence_problems(
        history, trainer.global_step, **(cfg.callbacks.get("convergence") or {}), watch_box=shrinks_boxes(cfg.loss)
    )
    for problem in problems:
        log.warning("stage '%s' did not converge: %s", name, problem)
    return StageResult(
        name=name, checkpoint=Path(best), collapsed=guard.collapsed, steps=trainer.global_step, not_converged=problems,
        steps_per_second=rate, recoveries=guard.recoveries,
    )


def shrinks_boxes(loss_cfg: DictConfig) -> bool:
    """Whether a loss is meant to turn boxes into lesions, so that predicting the boxes means it has not learnt."""
    return loss_cfg.supervision != "label" and loss_cfg.name != WEAK_STAGE_LOSS


def evaluate_stage(cfg: DictConfig, checkpoint: Path, stage_dir: Path) -> list[dict]:
    model = LesionSegmenter.from_checkpoint(checkpoint, map_location="cpu")  # never Lightning's: it builds the file's loss
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        model = model.cuda()
    cases = read_dataset(cfg.data.root).split(cfg.evaluate.split)
    postprocess = instantiate(cfg.postprocess.fn) if cfg.postprocess.get("fn") else None
    return evaluate_cases(
        model, cases, stage_dir, postprocess=postprocess,
        window=cfg.evaluate.window, overlap=cfg.evaluate.overlap, threshold=cfg.evaluate.threshold,
        mirror_axes=cfg.evaluate.get("mirror_axes", ()),
    )
