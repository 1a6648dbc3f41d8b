"""``train(cfg)``: fit one experiment (both of the paper's stages when it needs them) and evaluate it.

``train.py`` is a thin Hydra wrapper around this; tests call it directly with composed configs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import wandb
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from wspet.collapse import CollapseGuard
from wspet.data.check import validate_dataset
from wspet.data.datamodule import PetDataModule
from wspet.data.format import read_dataset
from wspet.data.phantom import write_phantom_dataset
from wspet.evaluation import evaluate_cases, format_table, mean_metrics
from wspet.io import write_text
from wspet.module import LesionSegmenter

log = logging.getLogger(__name__)

WEAK_STAGE_LOSS = "dice"


@dataclass
class StageResult:
    """What one training stage left: its best checkpoint and test metrics."""

    name: str
    checkpoint: Path
    collapsed: bool
    test_rows: list[dict] = field(default_factory=list)

    @property
    def test_summary(self) -> dict:
        return mean_metrics(self.test_rows) if self.test_rows else {}


def train(cfg: DictConfig) -> dict:
    """Train and evaluate the experiment ``cfg``; return the summary also written to ``summary.json``."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_dataset(cfg.data)
    check_dataset(cfg)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    stages = []
    init_from = cfg.model.init_from
    if needs_pretraining(cfg):
        stage_cfg = pretraining_config(cfg)
        stages.append(fit_and_evaluate(stage_cfg, out_dir / "pretrain_dice", init_from, "pretrain_dice"))
        init_from = str(stages[-1].checkpoint)
    stages.append(fit_and_evaluate(cfg, out_dir, init_from, cfg.experiment_name))
    summary = run_summary(cfg, stages)
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
        max_spacing_ratio=cfg.data.max_spacing_ratio,
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
        stage.trainer.max_epochs = cfg.pretrain.max_epochs
        stage.run_name = f"{cfg.run_name}-pretrain"
        stage.postprocess = {"name": "none", "fn": None}
        if "logger" in stage and stage.logger and "wandb" in stage.logger:
            stage.logger.wandb.name = stage.run_name
            stage.logger.wandb.tags = [f"loss:{cfg.pretrain.loss.name}", "postprocess:none", "stage:pretrain"]
    return stage


def build_model(cfg: DictConfig, init_from: str | None) -> LesionSegmenter:
    model = LesionSegmenter(
        net=OmegaConf.to_container(cfg.model.net, resolve=True),
        loss=OmegaConf.to_container(cfg.loss.module, resolve=True),
        supervision=cfg.loss.supervision,
        optimizer=OmegaConf.to_container(cfg.model.optimizer, resolve=True),
        channels_last=cfg.model.channels_last,
    )
    if init_from:
        load_network_weights(model, init_from)
    return model


def load_network_weights(model: LesionSegmenter, path: str | Path) -> None:
    """Copy the U-Net weights of checkpoint ``path`` into ``model``; refuse a different network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint to initialise from does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint.get("hyper_parameters", {}).get("net")
    if saved is None:
        raise ValueError(f"{path}: not a wspet checkpoint (no 'net' hyper-parameters)")
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


def fit_and_evaluate(cfg: DictConfig, stage_dir: Path, init_from: str | None, name: str) -> StageResult:
    stage_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = PetDataModule(supervision=cfg.loss.supervision, **_data_arguments(cfg.data))
    datamodule.setup("fit")
    model = build_model(cfg, init_from)
    checkpoint = ModelCheckpoint(dirpath=stage_dir / "checkpoints", filename="best", **cfg.callbacks.checkpoint)
    guard = CollapseGuard(**cfg.callbacks.collapse_guard)
    callbacks = [checkpoint, EarlyStopping(**cfg.callbacks.early_stopping), guard]
    loggers = build_loggers(cfg, stage_dir)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(stage_dir))
    trainer.fit(model, datamodule=datamodule)
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if not best:  # fast_dev_run and limit_* runs save nothing; keep the weights they reached
        best = stage_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(best)
    best = Path(best)
    result = StageResult(name=name, checkpoint=best, collapsed=guard.collapsed)
    if cfg.evaluate.split != "none" and trainer.is_global_zero:
        result.test_rows = evaluate_stage(cfg, best, stage_dir)
        log_test_metrics(loggers, result)
    finish_loggers(loggers)
    return result


def _data_arguments(data_cfg: DictConfig) -> dict:
    arguments = OmegaConf.to_container(data_cfg, resolve=True)
    for key in ("phantom", "max_spacing_ratio"):  # used before the data module, not by it
        arguments.pop(key, None)
    return arguments


def build_loggers(cfg: DictConfig, stage_dir: Path) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        loggers.append(instantiate(logger_cfg, save_dir=str(stage_dir)))
    return loggers


def evaluate_stage(cfg: DictConfig, checkpoint: Path, stage_dir: Path) -> list[dict]:
    model = LesionSegmenter.load_from_checkpoint(checkpoint, map_location="cpu")
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        model = model.cuda()
    cases = read_dataset(cfg.data.root).split(cfg.evaluate.split)
    postprocess = instantiate(cfg.postprocess.fn) if cfg.postprocess.get("fn") else None
    return evaluate_cases(
        model, cases, stage_dir, postprocess=postprocess,
        window=cfg.evaluate.window, overlap=cfg.evaluate.overlap, threshold=cfg.evaluate.threshold,
    )


def log_test_metrics(loggers: list, result: StageResult) -> None:
    summary = {f"test/{k}": v for k, v in result.test_summary.items()}
    for logger in loggers:
        logger.log_metrics(summary)


def finish_loggers(loggers: list) -> None:
    for logger in loggers:
        logger.finalize("success")
    # Each stage is its own W&B run; close this one before the next stage opens another.
    if wandb.run is not None:
        wandb.finish()


def run_summary(cfg: DictConfig, stages: list[StageResult]) -> dict:
    final = stages[-1]
    return {
        "experiment": cfg.experiment_name,
        "loss": cfg.loss.name,
        "postprocess": cfg.postprocess.name,
        "seed": cfg.seed,
        "data_root": str(Path(cfg.data.root).resolve()),
        "checkpoint": str(final.checkpoint),
        "collapsed": final.collapsed,
        "test": final.test_summary,
        "stages": {s.name: {"checkpoint": str(s.checkpoint), "collapsed": s.collapsed, "test": s.test_summary} for s in stages},
    }


def print_results(stages: list[StageResult]) -> None:
    for stage in stages:
        if stage.test_rows:
            print(format_table(stage.test_rows, f"\nTest results of stage '{stage.name}':"))
        if stage.collapsed:
            print(f"WARNING: stage '{stage.name}' collapsed to empty predictions (see the log)")
    if len(stages) > 1 and all(s.test_rows for s in stages):
        before, after = (s.test_summary["dice"] for s in (stages[0], stages[-1]))
        print(f"\nMean test Dice: {stages[0].name} {before:.3f} -> {stages[-1].name} {after:.3f}")
