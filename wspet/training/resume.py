"""Resuming a run and its records: what ``ckpt_path`` resumes, each stage's ``stage.json``, the run's config.

A signal that stops training ends the process so that the run can be resumed (or Slurm requeues it).
The whole scheme: docs/scaling.md.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wspet.training.checkpointing import SaveOnSignal, requeued_by_slurm, resume_checkpoint
from wspet.io import write_text
from wspet.training.provenance import write_provenance
from wspet.training.stage_result import PRETRAIN_STAGE, StageResult

log = logging.getLogger(__name__)

# Written by rank 0 into each stage's folder once the stage is trained, and again once evaluated;
# a resumed run reads it instead of training the stage again.
STAGE_RECORD = "stage.json"


def write_stage_record(stage_dir: Path, result: StageResult) -> None:
    record = {**asdict(result), "checkpoint": str(result.checkpoint)}
    write_text(stage_dir / STAGE_RECORD, json.dumps(record, indent=2, default=float) + "\n")


def read_stage_record(stage_dir: Path) -> StageResult | None:
    """The stage a previous attempt finished training (and maybe evaluating), or None."""
    path = stage_dir / STAGE_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return StageResult(**{**record, "checkpoint": Path(record["checkpoint"])})


def resume_mode(cfg: DictConfig, out_dir: Path) -> str | Path | None:
    """None (start afresh), ``"last"`` (resume the run folder) or the checkpoint file to resume from."""
    value = cfg.get("ckpt_path")
    if value in (None, ""):
        if requeued_by_slurm() and _has_progress(out_dir):
            log.warning("requeued Slurm job: resuming %s from its last checkpoint", out_dir)
            return "last"
        return None
    if value == "last":
        if not _has_progress(out_dir):
            raise ValueError(
                f"ckpt_path=last: {out_dir} has no checkpoints/last.ckpt and no finished stage to resume; "
                "point hydra.run.dir (or paths.output_dir) at the run folder to resume"
            )
        return "last"
    path = Path(str(value))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path {value}: no such checkpoint file (or use ckpt_path=last)")
    return path


def _has_progress(out_dir: Path) -> bool:
    stage_dirs = (out_dir, out_dir / PRETRAIN_STAGE)
    return any(resume_checkpoint(d) or (d / STAGE_RECORD).is_file() for d in stage_dirs)


def finished_summary(out_dir: Path) -> dict | None:
    """The summary of a run whose last stage was trained and evaluated, or None."""
    record = read_stage_record(out_dir)
    summary = out_dir / "summary.json"
    if record is None or not record.evaluated or not summary.is_file():
        return None
    return json.loads(summary.read_text())


def record_run(cfg: DictConfig, out_dir: Path, resuming: bool) -> None:
    """``config.yaml`` and ``provenance.json`` (+ ``git.diff``); a resumed run keeps the first config."""
    saved = out_dir / "config.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resuming and saved.is_file():
        changed = config_changes(OmegaConf.to_container(OmegaConf.load(saved)), resolved)
        if changed:
            log.warning("resuming %s with a config that differs from its config.yaml at: %s", out_dir, ", ".join(changed))
    else:
        write_text(saved, OmegaConf.to_yaml(resolved))
    write_provenance(out_dir, resumed=resuming)


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (``ckpt_path`` excepted)."""
    changed = []
    for key in sorted(set(before) | set(after), key=str):
        name = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if name == "ckpt_path":
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += config_changes(old, new, f"{name}.")
        elif old != new:
            changed.append(name)
    return changed


def stopped_by_signal(saver: SaveOnSignal, run_dir: Path) -> None:
    """End the process after a signal stopped training: requeue if Slurm asked, exit 128 + signal."""
    saver.hand_over()  # submitit's requeue handler exits here
    signum = saver.pending or signal.SIGTERM
    where = f"saved {saver.path}" if saver.saved else "no checkpoint saved"
    log.error(
        "training stopped by %s (%s); resume with the same overrides plus ckpt_path=last "
        "hydra.run.dir=%s", signal.Signals(signum).name, where, run_dir,
    )
    raise SystemExit(128 + signum)
