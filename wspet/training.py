"""``train(cfg)``: fit one experiment (both of the paper's stages when it needs them) and evaluate it.

``train.py`` is a thin Hydra wrapper around this; tests call it directly with composed configs.
Resuming, signals, DDP and the run's provenance record: docs/scaling.md.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import lightning as L
import torch
import torchio as tio
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from wspet.callbacks import ValidationHistory, best_validation, build_callbacks
from wspet.checkpointing import (
    LAST,
    REQUEUE_SIGNAL,
    AtomicCheckpointIO,
    EpochSeededLoader,
    SaveOnSignal,
    launch_rank_is_zero,
    resume_checkpoint,
)
from wspet.collapse import CollapseGuard
from wspet.convergence import convergence_problems
from wspet.data.check import validate_dataset
from wspet.data.datamodule import PetDataModule
from wspet.data.preprocessing import Preprocessing
from wspet.data.format import read_dataset
from wspet.data.phantom import write_phantom_dataset
from wspet.evaluation import evaluate_cases, format_table
from wspet.io import atomic_path, write_text
from wspet.module import LesionSegmenter, load_checkpoint
from wspet.precision import device_type, resolve_precision
from wspet.resume import (
    finished_summary,
    read_stage_record,
    record_run,
    resume_mode,
    stopped_by_signal,
    write_stage_record,
)
from wspet.run_loggers import build_loggers, finish_loggers, log_test_metrics
from wspet.stage_cache import StageCache, stage_key
from wspet.stage_result import PRETRAIN_STAGE, StageResult

log = logging.getLogger(__name__)

WEAK_STAGE_LOSS = "dice"

def train(cfg: DictConfig) -> dict:
    """Train and evaluate the experiment ``cfg``; return the summary also written to ``summary.json``.

    ``cfg.ckpt_path`` (docs/scaling.md): unset starts afresh, except in a Slurm job's requeued attempt,
    which resumes like ``last``; ``last`` resumes the run folder's interrupted stage from its
    ``last.ckpt`` and never retrains a finished stage; a file resumes the last stage from it.
    Under DDP only global rank 0 writes run-folder files and evaluates.
    """
    out_dir = Path(cfg.paths.output_dir)
    rank_zero = launch_rank_is_zero()
    resume = resume_mode(cfg, out_dir)
    resuming = resume is not None
    from_file = resume if isinstance(resume, Path) else None
    if resume == "last" and (finished := finished_summary(out_dir)) is not None:
        log.info("%s finished before; nothing to resume", out_dir)
        return finished
    if rank_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
    ensure_dataset(cfg.data)
    check_dataset(cfg)
    if rank_zero:
        record_run(cfg, out_dir, resuming)
    stages = []
    init_from = cfg.model.init_from
    if needs_pretraining(cfg):
        stage_cfg = pretraining_config(cfg)
        stage_dir = out_dir / PRETRAIN_STAGE
        if from_file is None:
            stages.append(fit_and_evaluate(stage_cfg, stage_dir, init_from, PRETRAIN_STAGE, resuming=resuming))
            init_from = str(stages[-1].checkpoint)
        elif (record := read_stage_record(stage_dir)) is not None:  # reported, not needed: the file has the weights
            stages.append(record)
    # A checkpoint file named by ckpt_path is trained from even if the run folder records the stage as done.
    final_resuming = resuming and from_file is None
    stages.append(fit_and_evaluate(cfg, out_dir, init_from, cfg.experiment_name, resuming=final_resuming, ckpt_path=from_file))
    summary = run_summary(cfg, stages)
    if rank_zero:
        write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        print_results(stages)
    return summary


def ensure_dataset(data_cfg: DictConfig) -> None:
    """Make the phantom set at ``data.root`` if the config asks for one and it is missing."""
    root = Path(data_cfg.root)
    if (root / "dataset.json").is_file() or not data_cfg.get("phantom"):
        return
    spec = data_cfg.phantom
    log.info("making the phantom dataset in %s", root)
    write_phantom_dataset(root, n_train=spec.cases, n_test=spec.test_cases, seed=spec.seed, shape=tuple(spec.shape))


def check_dataset(cfg: DictConfig) -> None:
    """Validate every case before any training time is spent; raise listing every problem."""
    report = validate_dataset(
        cfg.data.root,
        supervision=cfg.loss.supervision,
        box_margin_mm=cfg.data.box_margin_mm,
        # Resampling to one spacing makes differing native spacings harmless.
        max_spacing_ratio=None if cfg.data.get("target_spacing") else cfg.data.max_spacing_ratio,
    )
    for warning in report.warnings:
        log.warning(warning)
    report.raise_if_problems()
    log.info(report.summary())


def needs_pretraining(cfg: DictConfig) -> bool:
    enabled = cfg.pretrain.enabled
    if enabled == "auto":
        weak = cfg.loss.supervision == "box" and cfg.loss.name != WEAK_STAGE_LOSS
        return weak and not cfg.model.init_from
    if not isinstance(enabled, bool):
        raise ValueError(f"pretrain.enabled {enabled!r} is not one of auto, true, false")
    return enabled


def pretraining_config(cfg: DictConfig) -> DictConfig:
    """The box-Dice stage: the same run with ``pretrain.loss``, no post-processing."""
    stage = cfg.copy()
    with open_dict(stage):
        stage.loss = cfg.pretrain.loss
        stage.trainer.max_steps = cfg.pretrain.max_steps
        stage.run_name = f"{cfg.run_name}-pretrain"
        stage.postprocess = {"name": "none", "fn": None}
        if "logger" in stage and stage.logger and "wandb" in stage.logger:
            stage.logger.wandb.name = f"{cfg.logger.wandb.name}-pretrain"
            stage.logger.wandb.tags = [f"loss:{cfg.pretrain.loss.name}", "postprocess:none", "stage:pretrain"]
    return stage


def build_model(cfg: DictConfig, init_from: str | None, training_spacing: list[float] | None = None) -> LesionSegmenter:
    model = LesionSegmenter(
        net=OmegaConf.to_container(cfg.model.net, resolve=True),
        loss=OmegaConf.to_container(cfg.loss.module, resolve=True),
        supervision=cfg.loss.supervision,
        optimizer=OmegaConf.to_container(cfg.model.optimizer, resolve=True),
        channels_last=cfg.model.channels_last,
        preprocessing=data_preprocessing(cfg.data).as_dict(),
        training_spacing=training_spacing,
        scheduler=OmegaConf.to_container(cfg.model.scheduler, resolve=True) if cfg.model.get("scheduler") else None,
    )
    if init_from:
        load_network_weights(model, init_from)
    return model


def data_preprocessing(data_cfg: DictConfig) -> Preprocessing:
    """The data config's resampling and intensity steps, which the checkpoint keeps for inference."""
    return Preprocessing(
        target_spacing=data_cfg.get("target_spacing"),
        intensity=data_cfg.get("intensity", "zscore"),
        suv_scale=data_cfg.get("suv_scale", 1.0),
    )


def load_network_weights(model: LesionSegmenter, path: str | Path) -> None:
    """Copy the U-Net weights of checkpoint ``path`` into ``model``; refuse a different network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint to initialise from does not exist")
    checkpoint = load_checkpoint(path)  # weights-only: nothing in the file runs (docs/security.md)
    saved = checkpoint["hyper_parameters"]["net"]
    wanted = model.hparams.net
    for key in sorted(set(saved) | set(wanted)):
        if list_or_value(saved.get(key)) != list_or_value(wanted.get(key)):
            raise ValueError(
                f"{path}: model.net.{key} is {saved.get(key)!r} in the checkpoint but {wanted.get(key)!r} in the config"
            )
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    model.net.load_state_dict(weights)
    log.info("initialised the network from %s", path)


def list_or_value(value):
    return list(value) if isinstance(value, (list, tuple)) else value


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
    except ValueError as error:
        log.warning("stage '%s': not reusing cached stage %s, training it again: %s", name, key, error)
        return None
    log.info("stage '%s': identical to cached stage %s; reusing %s", name, key, cached)
    target = stage_dir / "checkpoints" / "best.ckpt"
    if launch_rank_is_zero():
        with atomic_path(target) as tmp:
            shutil.copyfile(cached, tmp)
    collapsed = json.loads(cached.with_name("stage.json").read_text()).get("collapsed", False)
    return StageResult(name=name, checkpoint=target, collapsed=collapsed)


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
    datamodule = PetDataModule(
        supervision=cfg.loss.supervision, pseudo_labels=_pseudo_label_arguments(cfg.loss), **_data_arguments(cfg.data)
    )
    datamodule.setup("fit")
    model = build_model(cfg, init_from, datamodule.median_spacing())
    checkpoint = ModelCheckpoint(dirpath=stage_dir / "checkpoints", filename="best", **cfg.callbacks.checkpoint)
    guard = CollapseGuard(**cfg.callbacks.collapse_guard)
    saver = SaveOnSignal(stage_dir / "checkpoints" / LAST)
    callbacks = build_callbacks(cfg, checkpoint, guard, saver)
    trainer = build_trainer(cfg, callbacks, loggers, stage_dir)
    if ckpt_path is not None:
        log.info("stage '%s': resuming from %s", name, ckpt_path)
    try:
        trainer.fit(model, datamodule=FitData(datamodule, cfg.seed), ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:
        stopped_by_signal(saver, Path(cfg.paths.output_dir))
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if not best:  # fast_dev_run and limit_* runs save nothing; keep the weights they reached
        best = stage_dir / "checkpoints" / LAST
        trainer.save_checkpoint(best)
    history = next(c for c in callbacks if isinstance(c, ValidationHistory)).steps
    problems = convergence_problems(
        history, trainer.global_step, **(cfg.callbacks.get("convergence") or {}), watch_box=shrinks_boxes(cfg.loss)
    )
    for problem in problems:
        log.warning("stage '%s' did not converge: %s", name, problem)
    return StageResult(
        name=name, checkpoint=Path(best), collapsed=guard.collapsed, steps=trainer.global_step, not_converged=problems
    )


def shrinks_boxes(loss_cfg: DictConfig) -> bool:
    """Whether a loss is meant to turn boxes into lesions, so that predicting the boxes means it has not learnt."""
    return loss_cfg.supervision != "label" and loss_cfg.name != WEAK_STAGE_LOSS


def _pseudo_label_arguments(loss_cfg: DictConfig) -> dict | None:
    settings = loss_cfg.get("pseudo_labels")
    return OmegaConf.to_container(settings, resolve=True) if settings is not None else None


class FitData(L.LightningDataModule):
    """What the Trainer fits on: ``PetDataModule``'s data, replayable for resuming, split over DDP ranks.

    Training batches come from an :class:`EpochSeededLoader` (each rank its own share of the volumes);
    validation volumes are split over the ranks without the padding ``DistributedSampler`` adds, so
    that ``val/*`` means (reduced across ranks by torchmetrics) count every volume exactly once.
    """

    def __init__(self, data: PetDataModule, seed: int) -> None:
        super().__init__()
        self.data = data
        self.seed = seed

    def train_dataloader(self) -> EpochSeededLoader:
        return EpochSeededLoader(self._volumes_loader, len(self.data.train_subjects), self.seed, self.trainer)

    def _volumes_loader(self, indices: list[int]) -> tio.SubjectsLoader:
        part = copy.copy(self.data)
        part.train_subjects = [self.data.train_subjects[i] for i in indices]
        return part.train_dataloader()

    def val_dataloader(self) -> tio.SubjectsLoader:
        loader = self.data.val_dataloader()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if world == 1:
            return loader
        if len(loader.dataset) < world:
            raise ValueError(
                f"data.val_fraction {self.data.val_fraction}: {len(loader.dataset)} validation volume(s) "
                f"for {world} DDP processes; each process needs at least one"
            )
        sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
        return tio.SubjectsLoader(loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers, sampler=sampler)


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, stage_dir: Path) -> L.Trainer:
    """The configured Trainer with atomic checkpoints and, under Slurm, Slurm's requeue signal.

    ``trainer.precision: auto`` is resolved from the hardware here (:mod:`wspet.precision`) and
    logged with its reason; on a GPU, cudnn autotunes its kernels (``benchmark``) unless the
    config sets ``benchmark`` or asks for ``deterministic`` runs.
    """
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Lightning's default requeue signal is SIGUSR1; the launcher's sbatch --signal sends SIGUSR2.
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL))
    device = device_type(cfg.trainer.accelerator)
    choice = resolve_precision(cfg.trainer.precision, device)
    log.info("trainer.precision %s on %s: %s, because %s", cfg.trainer.precision, device, choice.precision, choice.reason)
    settings = {"precision": choice.precision, **training_budget(cfg.trainer)}
    if device == "cuda" and cfg.trainer.get("benchmark") is None and not cfg.trainer.get("deterministic"):
        # Training patches share one shape (validation volumes a few, each tuned once), so the autotuning pays every step after.
        settings["benchmark"] = True
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(stage_dir), plugins=plugins, **settings
    )


def training_budget(trainer_cfg: DictConfig) -> dict:
    """How long to train and when to validate: a step budget, or an epoch budget where one is given.

    A step budget (``max_epochs: null``, the default) trains ``max_steps`` steps and validates every
    ``val_check_interval`` steps across epoch boundaries, at least once per run so that even a short
    run keeps a best checkpoint. A run given ``trainer.max_epochs`` is counted in epochs alone, as
    Lightning counts it, and validates at the end of every epoch.
    """
    if trainer_cfg.get("max_epochs") is not None:
        return {
            "max_steps": -1, "val_check_interval": 1.0,
            "check_val_every_n_epoch": trainer_cfg.get("check_val_every_n_epoch") or 1,
        }
    interval, budget = trainer_cfg.get("val_check_interval") or 100, trainer_cfg.get("max_steps", -1)
    if isinstance(interval, int) and budget and budget > 0:
        interval = min(interval, budget)
    return {"val_check_interval": interval, "check_val_every_n_epoch": None}


def _data_arguments(data_cfg: DictConfig) -> dict:
    arguments = OmegaConf.to_container(data_cfg, resolve=True)
    for key in ("phantom", "max_spacing_ratio"):  # used before the data module, not by it
        arguments.pop(key, None)
    return arguments


def evaluate_stage(cfg: DictConfig, checkpoint: Path, stage_dir: Path) -> list[dict]:
    model = LesionSegmenter.from_checkpoint(checkpoint, map_location="cpu")  # never Lightning's: it builds the file's loss
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        model = model.cuda()
    cases = read_dataset(cfg.data.root).split(cfg.evaluate.split)
    postprocess = instantiate(cfg.postprocess.fn) if cfg.postprocess.get("fn") else None
    return evaluate_cases(
        model, cases, stage_dir, postprocess=postprocess,
        window=cfg.evaluate.window, overlap=cfg.evaluate.overlap, threshold=cfg.evaluate.threshold,
    )


def best_validation_metric(cfg: DictConfig, stage: StageResult) -> dict:
    """``cfg.optimized_metric`` at the validation whose checkpoint the stage kept (what a sweeper optimises)."""
    monitor = cfg.callbacks.checkpoint
    return best_validation(stage.checkpoint, cfg.get("optimized_metric", "val/loss"), monitor.monitor, monitor.mode)


def run_summary(cfg: DictConfig, stages: list[StageResult]) -> dict:
    final = stages[-1]
    return {
        "experiment": cfg.experiment_name,
        "loss": cfg.loss.name,
        "postprocess": cfg.postprocess.name,
        "seed": cfg.seed,
        "precision": resolve_precision(cfg.trainer.precision, device_type(cfg.trainer.accelerator)).precision,
        "data_root": str(Path(cfg.data.root).resolve()),
        "checkpoint": str(final.checkpoint),
        "collapsed": final.collapsed,
        "converged": not final.not_converged,
        "not_converged": final.not_converged,
        "test": final.test_summary,
        "validation": best_validation_metric(cfg, final),
        "stages": {
            s.name: {
                "checkpoint": str(s.checkpoint), "steps": s.steps, "collapsed": s.collapsed,
                "not_converged": s.not_converged, "test": s.test_summary,
            }
            for s in stages
        },
    }


def print_results(stages: list[StageResult]) -> None:
    for stage in stages:
        if stage.test_rows:
            print(format_table(stage.test_rows, f"\nTest results of stage '{stage.name}':"))
        if stage.collapsed:
            print(f"WARNING: stage '{stage.name}' collapsed to empty predictions (see the log)")
        for problem in stage.not_converged:
            print(f"WARNING: stage '{stage.name}' did not converge: {problem}")
    if len(stages) > 1 and all(s.test_rows for s in stages):
        before, after = (s.test_summary["dice"] for s in (stages[0], stages[-1]))
        print(f"\nMean test Dice: {stages[0].name} {before:.3f} -> {stages[-1].name} {after:.3f}")
