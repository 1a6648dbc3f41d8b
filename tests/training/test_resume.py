"""Resuming: a run killed mid-epoch finishes with ckpt_path=last to the very weights of an uninterrupted run.

Also: a finished stage is never retrained, atomic checkpoint files, and the requeue signal held back
until the checkpoint is saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import wspet.training.experiment as training
import wspet.training.stage as stage
from wspet.data.replay import EpochSeededLoader, epoch_seed
from wspet.training.checkpointing import AtomicCheckpointIO
from wspet.model.module import LesionSegmenter
from wspet.training.resume import STAGE_RECORD, resume_mode

REPO = Path(__file__).resolve().parents[2]
FAST = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
STEPS_PER_EPOCH = 20  # 5 training volumes x 4 patches, batch 1


def train_command(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """``python train.py`` on 16^3 crops of the tiny phantoms, deterministic: 2 epochs of 20 one-patch steps.

    The CSV log is written at every step, so a test can see how far training got.
    """
    return [
        sys.executable, str(REPO / "train.py"),
        f"data.root={data_root}", "data.phantom=null", "data.volume_size=[16,16,16]", "data.patch_size=[16,16,16]",
        "data.batch_size=1", f"data.samples_per_volume={STEPS_PER_EPOCH // 5}", "data.queue_length=8",
        "model.net.features=[4,8,16]", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "logger=csv", "+logger.csv.flush_logs_every_n_steps=1", "trainer.log_every_n_steps=1",
        "evaluate.window=[16,16,16]", "evaluate.overlap=[0,0,0]",
        "loss=dice", "trainer.max_epochs=2", "trainer.deterministic=true", f"hydra.run.dir={run_dir}", *overrides,
    ]


def start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Return once the run's CSV log has a row of ``epoch`` (logged at every step)."""
    csv = run_dir / "csv" / "metrics.csv"
    deadline = time.monotonic() + timeout_s
    while True:
        rows = csv.read_text().splitlines()[1:] if csv.is_file() else []
        if any(row.split(",")[0] == str(epoch) for row in rows):
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before epoch {epoch}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"epoch {epoch} did not start within {timeout_s} s")
        time.sleep(0.02)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load(a)["state_dict"], load(b)["state_dict"]
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{a.name}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_sigterm_mid_epoch_then_ckpt_path_last_gives_the_uninterrupted_weights(tiny_dataset, tmp_path):
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference = start(train_command(tiny_dataset, reference_dir), tmp_path / "reference.log")
    run = start(train_command(tiny_dataset, run_dir), tmp_path / "run.log")
    try:
        wait_for_epoch(run_dir, 1, run, tmp_path / "run.log", timeout_s=240)
        run.send_signal(signal.SIGTERM)  # a step or two into epoch 1
        assert run.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
    stopped = load(run_dir / "checkpoints" / "last.ckpt")
    done_in_epoch = stopped["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert stopped["epoch"] == 1 and 0 < done_in_epoch < STEPS_PER_EPOCH, (stopped["epoch"], done_in_epoch)
    assert stopped["global_step"] == STEPS_PER_EPOCH + done_in_epoch
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run(
        train_command(tiny_dataset, run_dir, "++ckpt_path=last"), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(reference_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    assert_same_weights(reference_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "best.ckpt")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference_dir, run_dir)]
    assert summaries[0]["test"] == summaries[1]["test"]
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 1
    # Lightning's CSV logger starts metrics.csv afresh; the first attempt's rows are kept beside it.
    assert "val/loss" in (run_dir / "csv" / "metrics-attempt1.csv").read_text()


def test_a_finished_stage_is_not_trained_again(train_config, tmp_path, monkeypatch):
    train_config_overrides = ["loss=mdice", *FAST]
    first = training.train(train_config(tmp_path, train_config_overrides))
    fits = []
    original = stage.fit_stage
    monkeypatch.setattr(stage, "fit_stage", lambda *a, **k: (fits.append((a[3], a[4])), original(*a, **k))[1])

    # A finished run: nothing is trained again, its summary comes back.
    again = training.train(train_config(tmp_path, [*train_config_overrides, "++ckpt_path=last"]))
    assert fits == [] and again["test"] == first["test"]

    # Killed during the second stage (its last.ckpt written, not its record): the box-Dice stage
    # is taken from its record, the second stage continues from its last.ckpt.
    (tmp_path / "summary.json").unlink()
    (tmp_path / STAGE_RECORD).unlink()
    resumed = training.train(train_config(tmp_path, [*train_config_overrides, "++ckpt_path=last"]))
    assert fits == [("mdice", tmp_path / "checkpoints" / "last.ckpt")]
    assert resumed["stages"]["pretrain_dice"] == first["stages"]["pretrain_dice"]


def test_killed_during_evaluation_evaluates_without_training(train_config, tmp_path, monkeypatch):
    overrides = ["loss=dice", *FAST]
    first = training.train(train_config(tmp_path, overrides))
    record = json.loads((tmp_path / STAGE_RECORD).read_text())
    record.update(evaluated=False, test_rows=[])
    (tmp_path / STAGE_RECORD).write_text(json.dumps(record))
    (tmp_path / "summary.json").unlink()
    monkeypatch.setattr(stage, "fit_stage", lambda *a, **k: pytest.fail("a trained stage was trained again"))
    resumed = training.train(train_config(tmp_path, [*overrides, "++ckpt_path=last"]))
    assert resumed["test"] == first["test"]


def test_what_ckpt_path_resumes(train_config, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    cfg = train_config(tmp_path, ["++ckpt_path=last"])
    with pytest.raises(ValueError, match=r"ckpt_path=last: .* has no checkpoints/last.ckpt"):
        resume_mode(cfg, tmp_path)
    with pytest.raises(FileNotFoundError, match="ckpt_path nowhere.ckpt: no such checkpoint"):
        resume_mode(train_config(tmp_path, ["++ckpt_path=nowhere.ckpt"]), tmp_path)
    fresh = train_config(tmp_path)
    assert resume_mode(fresh, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_mode(fresh, tmp_path) is None  # a leftover checkpoint alone never resumes
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # Slurm's second attempt of this job
    assert resume_mode(fresh, tmp_path) == "last"
    assert resume_mode(cfg, tmp_path) == "last"


def test_ckpt_path_file_continues_training_in_a_new_folder(train_config, tmp_path):
    training.train(train_config(tmp_path / "first", ["loss=dice", *FAST]))
    start = tmp_path / "first" / "checkpoints" / "last.ckpt"
    summary = training.train(train_config(tmp_path / "second", ["loss=dice", *FAST, "trainer.max_epochs=2", f"++ckpt_path={start}"]))
    assert load(start)["global_step"] == 2
    assert load(tmp_path / "second" / "checkpoints" / "last.ckpt")["global_step"] == 4  # epoch 1 only, after epoch 0
    assert summary["test"]["n_cases"] == 2


def test_atomic_checkpoint_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_requeue_signal_waits_for_the_checkpoint(train_config, tmp_path, monkeypatch):
    calls = []

    def requeue_handler(signum, frame):  # stands in for submitit's: it would requeue and exit
        saved = load(tmp_path / "checkpoints" / "last.ckpt")
        calls.append((signum, saved["global_step"]))

    original_step = LesionSegmenter.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # as Slurm does signal_delay_s before the time limit
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(LesionSegmenter, "training_step", step)
    previous = signal.signal(signal.SIGUSR2, requeue_handler)
    try:
        with pytest.raises(SystemExit) as stop:
            training.train(train_config(tmp_path, ["loss=dice", "trainer.max_epochs=3"]))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stop.value.code == 128 + signal.SIGUSR2
    # Held back until the batch in flight had finished and last.ckpt was saved, then run once.
    assert calls == [(signal.SIGUSR2, 3)]


def test_without_submitit_lightnings_slurm_requeue_runs_after_the_save(train_config, tmp_path, monkeypatch):
    # An sbatch script running train.py: Lightning's SLURMEnvironment owns the requeue signal.
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # records the requeue instead of asking a cluster
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    original_step = LesionSegmenter.training_step

    def step(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(LesionSegmenter, "training_step", step)
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit) as stop:
            training.train(train_config(tmp_path / "run", ["loss=dice", "trainer.max_epochs=3"]))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stop.value.code == 128 + signal.SIGUSR2
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert load(next((tmp_path / "run").glob("hpc_ckpt_*.ckpt")))["global_step"] == 3


class FakeTrainer:
    def __init__(self, epoch=0, rank=0, world=1):
        self.current_epoch, self.global_rank, self.world_size = epoch, rank, world


def loader_of(indices):
    # Stands in for the patch queue: each batch draws from torch's global generator.
    return [(i, torch.rand(1).item()) for i in indices]


def test_epoch_batches_depend_on_seed_epoch_and_rank_only():
    trainer = FakeTrainer(epoch=1)
    loader = EpochSeededLoader(loader_of, n_volumes=5, seed=7, trainer=trainer)
    first = list(loader)
    torch.rand(100)  # draws elsewhere (the model's) do not move the epoch's batches
    assert list(loader) == first
    loader.load_state_dict({"epoch": 1, "served": 2})
    assert list(loader) == first[2:]  # a resumed epoch skips what was trained on
    assert loader.state_dict() == {"epoch": 1, "served": 5}
    trainer.current_epoch = 2
    assert list(loader) != first
    assert epoch_seed(7, 1, 0) != epoch_seed(7, 1, 1)


def test_ddp_ranks_share_the_volumes_of_an_epoch():
    shards = [EpochSeededLoader(loader_of, 5, 0, FakeTrainer(epoch=3, rank=r, world=2)).shard(3) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3  # padded to equal length, so ranks step together
    assert set(shards[0]) | set(shards[1]) == set(range(5))


def test_last_checkpoint_follows_every_validation_not_only_the_best(train_config, tmp_path):
    # Monitoring the step with mode=min makes the first validation the best for good. Lightning 2.6
    # writes its own last.ckpt only beside a new best, so a killed run would resume from step 2.
    overrides = ["loss=dice", "callbacks=none", "callbacks.checkpoint.monitor=step", "callbacks.checkpoint.mode=min",
                 "trainer.max_epochs=null", "trainer.max_steps=6", "trainer.val_check_interval=2", "evaluate.split=none"]
    training.train(train_config(tmp_path, overrides))
    assert load(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 2
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
