"""A stage's loggers: built from ``cfg.logger`` under the stage's folder, given the test means, closed.

Each stage is its own W&B run; in a Hydra sweep, runs are grouped by the sweep's folder and named
by their overrides (two resolvers registered here, used by conf/logger/wandb.yaml; docs/scaling.md).
The W&B run gets the whole resolved config and the ``tags`` key; its id is recorded in the stage's
folder so that a resumed stage continues the same run. A stage reused from the stage cache says
in its W&B summary where the curves of the run that trained it are.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from pathlib import Path

import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from wspet.model.checkpoint import read_checkpoint
from wspet.training.checkpointing import launch_rank_is_zero
from wspet.io import write_text
from wspet.training.stage_result import StageResult

log = logging.getLogger(__name__)

# The stage's W&B run id, written by rank 0 when the run starts and read back when the stage resumes.
WANDB_ID_FILE = "wandb_run_id.txt"
# Key of the checkpoint entry that says where the stage's curves were logged (callbacks.CurvesOrigin).
CURVES_KEY = "wspet_curves"


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

    W&B: tagged with the logger's tags plus ``cfg.tags`` (and ``resumed``), given the whole resolved
    config, and resuming the run whose id ``stage_dir`` records when ``resumed``. Lightning's CSV logger
    deletes an existing ``metrics.csv``; a resumed stage keeps the earlier attempt's as
    ``metrics-attempt<k>.csv`` beside it.
    """
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:  # logger.wandb=null drops one
            continue
        arguments = {"save_dir": str(stage_dir)}
        if "tags" in logger_cfg:
            arguments["tags"] = [*logger_cfg.tags, *(cfg.get("tags") or []), *(["resumed"] if resumed else [])]
        is_wandb = issubclass(get_class(logger_cfg._target_), WandbLogger)
        if is_wandb:
            arguments |= {"id": wandb_run_id(stage_dir, resumed), "resume": "allow"}
        logger = instantiate(logger_cfg, **arguments)
        if resumed and isinstance(logger, CSVLogger) and launch_rank_is_zero():
            keep_earlier_csv(Path(logger.log_dir) / "metrics.csv")
        if is_wandb:
            # Lightning logs only the module's hyper-parameters; seeds, experiment, data and trainer
            # settings are what a dashboard groups and filters runs by.
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        loggers.append(logger)
    return loggers


def wandb_run_id(stage_dir: Path, resumed: bool) -> str:
    """The W&B run id recorded in ``stage_dir`` when resuming, else a new one, recorded there (rank 0)."""
    path = stage_dir / WANDB_ID_FILE
    if resumed and path.is_file():
        run_id = path.read_text().strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
            raise ValueError(f"{path}: {run_id[:80]!r} is not a W&B run id (letters, digits, - and _)")
        log.info("resuming W&B run %s recorded in %s", run_id, path)
        return run_id
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's own id form
    if launch_rank_is_zero():
        write_text(path, run_id + "\n")
    return run_id


def curves_origin(stage_dir: Path, loggers: list) -> dict:
    """Where a stage's curves are logged: its folder, its W&B run (id, project) and its CSV files."""
    origin = {"stage_dir": str(Path(stage_dir).resolve()), "wandb_run_id": None, "wandb_project": None, "csv": []}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            origin |= {"wandb_run_id": logger.version, "wandb_project": logger.name}
        elif isinstance(logger, CSVLogger):
            origin["csv"].append(str(Path(logger.log_dir).resolve() / "metrics.csv"))
    return origin


def reused_curves(checkpoint: Path, stage_dir: Path) -> dict | None:
    """The origin of the curves recorded in ``checkpoint`` when another stage folder trained it, else None."""
    saved = read_checkpoint(checkpoint)
    origin = saved.get(CURVES_KEY)
    if not origin or Path(origin.get("stage_dir", "")) == Path(stage_dir).resolve():
        return None
    return origin


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
    """Test means to every logger; the best/worst-case overlay picture to W&B as well.

    A stage reused from the stage cache has no curves of its own: its W&B summary's ``curves_from``
    (and the log) names the stage folder and W&B run that trained it.
    """
    summary = {f"test/{k}": v for k, v in result.test_summary.items()}
    origin = reused_curves(result.checkpoint, overlays.parent)
    if origin:
        log.info("stage '%s' was reused from the stage cache: its training curves are in %s (W&B run %s)",
                 result.name, origin["stage_dir"], origin["wandb_run_id"])
    for logger in loggers:
        logger.log_metrics(summary)
        if isinstance(logger, WandbLogger) and overlays.is_file():
            logger.log_image(key="test/overlays", images=[str(overlays)], caption=["best and worst test case"])
        if isinstance(logger, WandbLogger) and origin:
            logger.experiment.summary["curves_from"] = origin


def finish_loggers(loggers: list) -> None:
    for logger in loggers:
        logger.finalize("success")
    # Each stage is its own W&B run; close this one before the next stage opens another.
    if wandb.run is not None:
        wandb.finish()
