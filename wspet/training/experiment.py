"""``train(cfg)``: fit one experiment (both of the paper's stages when it needs them) and evaluate it.

``train.py`` is a thin Hydra wrapper around this; tests call it directly with composed configs.
Resuming, signals, DDP and the run's provenance record: docs/scaling.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from wspet.model.flips import check_mirror_axes
from wspet.inference.sliding_window import check_threshold
from wspet.metrics.summary import format_table
from wspet.io import write_text
from wspet.model.precision import denormals_flushed, device_type, resolve_precision
from wspet.training.callbacks import best_validation
from wspet.training.checkpointing import launch_rank_is_zero
from wspet.training.resume import finished_summary, read_stage_record, record_run, resume_mode
from wspet.training.self_training import relabel
from wspet.training.selection import check_selection_start
from wspet.training.stage import WEAK_STAGE_LOSS, build_datamodule, fit_and_evaluate
from wspet.training.stage_result import PRETRAIN_STAGE, StageResult

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Train and evaluate the experiment ``cfg``; return the summary also written to ``summary.json``.

    ``cfg.ckpt_path`` (docs/scaling.md): unset starts afresh, except in a Slurm job's requeued attempt,
    which resumes like ``last``; ``last`` resumes the run folder's interrupted stage from its
    ``last.ckpt`` and never retrains a finished stage; a file resumes the last stage from it.
    Under DDP only global rank 0 writes run-folder files and evaluates.
    """
    with denormals_flushed():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
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
    check_mirror_axes(cfg.evaluate.get("mirror_axes", ()))  # a typo fails now, not after training
    check_threshold(cfg.evaluate.threshold)
    check_selection_start(cfg.callbacks.checkpoint.get("selection_start", 0.0))
    data = build_datamodule(cfg)
    data.prepare_data()
    data.check()  # every case, before any training time is spent
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
    final_cfg = cfg
    for round_index in range(self_training_rounds(cfg, from_file)):
        round_dir = out_dir / f"self_training_{round_index}"
        stage = fit_and_evaluate(final_cfg, round_dir, init_from, f"{cfg.experiment_name}_round{round_index}", resuming=final_resuming)
        stages.append(stage)
        init_from = str(stage.checkpoint)
        labels = relabel(
            stage.checkpoint, cfg.data.root, out_dir / f"self_training_{round_index + 1}_labels", cfg.self_training.band,
            cfg.evaluate.window, cfg.evaluate.overlap, cfg.data.box_margin_mm, cfg.loss.get("pseudo_labels"),
        )
        final_cfg = with_pseudo_label_dir(cfg, labels)
    stages.append(fit_and_evaluate(final_cfg, out_dir, init_from, cfg.experiment_name, resuming=final_resuming, ckpt_path=from_file))
    summary = run_summary(cfg, stages)
    if rank_zero:
        write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        print_results(stages)
    return summary


def self_training_rounds(cfg: DictConfig, from_file: Path | None) -> int:
    """How many self-training rounds precede the final stage: ``self_training.rounds`` for ``loss=pseudo``, else 0."""
    rounds = int((cfg.get("self_training") or {}).get("rounds", 0) or 0)
    if rounds < 0:
        raise ValueError(f"self_training.rounds {rounds} must be >= 0")
    if rounds and cfg.loss.supervision != "pseudo":
        log.warning("self_training.rounds=%d ignored: loss=%s trains on %s, not pseudo-labels", rounds, cfg.loss.name, cfg.loss.supervision)
        return 0
    if rounds and from_file is not None:
        raise ValueError(f"ckpt_path={from_file} with self_training.rounds={rounds}: resume a self-training run with ckpt_path=last")
    return rounds


def with_pseudo_label_dir(cfg: DictConfig, labels: Path) -> DictConfig:
    """``cfg`` training on the label maps in ``labels`` instead of labels made from the boxes."""
    stage = cfg.copy()
    with open_dict(stage):
        stage.data.pseudo_label_dir = str(labels)
    return stage


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


def best_validation_metric(cfg: DictConfig, stage: StageResult) -> dict:
    """``cfg.optimized_metric`` at the validation whose checkpoint the stage kept (what a sweeper optimises)."""
    monitor = cfg.callbacks.checkpoint
    return best_validation(stage.checkpoint, cfg.get("optimized_metric", "val/loss"), monitor.monitor, monitor.mode)


def run_summary(cfg: DictConfig, stages: list[StageResult]) -> dict:
    final = stages[-1]
    return {
        "experiment": cfg.experiment_name,
        "loss": cfg.loss.name,
        "supervision": cfg.loss.supervision,
        "postprocess": cfg.postprocess.name,
        "seed": cfg.seed,
        "precision": resolve_precision(cfg.trainer.precision, device_type(cfg.trainer.accelerator)).precision,
        "data_root": str(Path(cfg.data.root).resolve()),
        "checkpoint": str(final.checkpoint),
        "collapsed": final.collapsed,
        "converged": not final.not_converged and not final.collapsed,
        "collapse_recoveries": final.recoveries,
        "not_converged": final.not_converged,
        "test": final.test_summary,
        "validation": best_validation_metric(cfg, final),
        "stages": {
            s.name: {
                "checkpoint": str(s.checkpoint), "steps": s.steps, "steps_per_second": s.steps_per_second,
                "collapsed": s.collapsed, "collapse_recoveries": s.recoveries,
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
            print(f"WARNING: stage '{stage.name}' collapsed: every validation volume predicted empty, or all lesion (see the log)")
        for recovery in stage.recoveries:
            print(f"WARNING: stage '{stage.name}' collapsed at step {recovery['step']} and went on from the weights of "
                  f"step {recovery['restored_step']} at learning rate {recovery['lr']:.3g}")
        for problem in stage.not_converged:
            print(f"WARNING: stage '{stage.name}' did not converge: {problem}")
    if len(stages) > 1 and all(s.test_rows for s in stages):
        before, after = (s.test_summary["dice"] for s in (stages[0], stages[-1]))
        print(f"\nMean test Dice: {stages[0].name} {before:.3f} -> {stages[-1].name} {after:.3f}")
