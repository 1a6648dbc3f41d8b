"""A stage's loggers: built from ``cfg.logger`` under the stage's folder, given the test means, closed.

Each stage is its own W&B run; in a Hydra sweep, runs are grouped by the sweep's folder and named
by their overrides (two resolvers registered here, used by conf/logger/default.yaml; docs/scaling.md).
"""

from __future__ import annotations

from pathlib import Path

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from wspet.checkpointing import launch_rank_is_zero
from wspet.stage_result import StageResult


def _sweep_name(default: str) -> str:
    """``${wspet_sweep_name:default}``: the sweep folder's name in a Hydra multirun, else ``default``."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return default


def _sweep_run_name(default: str) -> str:
    """``${wspet_sweep_run:default}``: the job's overrides (``loss=fs,seed=1``) in a multirun, else ``default``."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().job.override_dirname or default
    return default


# Used by conf/logger/default.yaml to group a sweep's W&B runs and name them by their overrides.
OmegaConf.register_new_resolver("wspet_sweep_name", _sweep_name, replace=True)
OmegaConf.register_new_resolver("wspet_sweep_run", _sweep_run_name, replace=True)


def build_loggers(cfg: DictConfig, stage_dir: Path, resumed: bool = False) -> list:
    """The configured loggers, writing under ``stage_dir``.

    A resumed stage's W&B run is a new run tagged ``resumed``. Lightning's CSV logger deletes an existing
    ``metrics.csv``; a resumed stage keeps the earlier attempt's as ``metrics-attempt<k>.csv`` beside it.
    """
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        arguments = {"save_dir": str(stage_dir)}
        if resumed and "tags" in logger_cfg:
            arguments["tags"] = [*logger_cfg.tags, "resumed"]
        logger = instantiate(logger_cfg, **arguments)
        if resumed and isinstance(logger, CSVLogger) and launch_rank_is_zero():
            keep_earlier_csv(Path(logger.log_dir) / "metrics.csv")
        loggers.append(logger)
    return loggers


def keep_earlier_csv(path: Path) -> Path | None:
    """Rename an earlier attempt's ``metrics.csv`` to the first free ``metrics-attempt<k>.csv``."""
    if not path.is_file():
        return None
    attempt = 1
    while (kept := path.with_name(f"{path.stem}-attempt{attempt}{path.suffix}")).exists():
        attempt += 1
    path.rename(kept)
    return kept


def log_test_metrics(loggers: list, result: StageResult, overlays: Path) -> None:
    """Test means to every logger; the best/worst-case overlay picture to W&B as well."""
    summary = {f"test/{k}": v for k, v in result.test_summary.items()}
    for logger in loggers:
        logger.log_metrics(summary)
        if isinstance(logger, WandbLogger) and overlays.is_file():
            logger.log_image(key="test/overlays", images=[str(overlays)], caption=["best and worst test case"])


def finish_loggers(loggers: list) -> None:
    for logger in loggers:
        logger.finalize("success")
    # Each stage is its own W&B run; close this one before the next stage opens another.
    if wandb.run is not None:
        wandb.finish()
