"""train.py itself on the local Slurm cluster: a two-job sweep, and a time-limit requeue that resumes training.

Both use hydra/launcher=slurm as users do, with the 2-core test machine's limits (1 CPU, 2 GB per job)
and tests/conftest.py's tiny settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SMALL_JOBS = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",  # above signal_delay_s (300 s): a USR2 counts as a time-out
]


def tiny(data_root: Path, size: int = 16, features: str = "[4,8,16]") -> list[str]:
    return [
        f"data.root={data_root}", "data.phantom=null", f"data.volume_size=[{size},{size},{size}]",
        f"data.patch_size=[{size},{size},{size}]", "data.batch_size=1", "data.queue_length=8",
        f"model.net.features={features}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        f"evaluate.window=[{size},{size},{size}]", "evaluate.overlap=[0,0,0]",
    ]


def sweep_command(sweep: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "-m", f"hydra.sweep.dir={sweep}", *SMALL_JOBS, *overrides]


def job_env(slurm_env: dict[str, str]) -> dict[str, str]:
    env = dict(slurm_env)
    env.pop("WANDB_MODE", None)  # tests disable W&B; here the launcher's jobs log offline, as by default
    env["WANDB_SILENT"] = "true"
    return env


def test_sweep_trains_each_job_in_its_run_folder(slurm_env, tiny_dataset, tmp_path):
    sweep = tmp_path / "ablation-7f3"
    overrides = [*tiny(tiny_dataset), "data.samples_per_volume=1", "trainer.max_epochs=1", "loss=dice,fs"]
    started = time.monotonic()
    run = subprocess.run(
        sweep_command(sweep, *overrides), env=job_env(slurm_env), capture_output=True, text=True, timeout=240, cwd=REPO
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"sweep of 2 jobs: {time.monotonic() - started:.0f} s")

    for job, loss in enumerate(("dice", "fs")):
        run_dir = sweep / str(job)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["loss"] == loss and summary["test"]["n_cases"] == 2
        assert (run_dir / "test_metrics.csv").read_text().count("\n") == 3
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert provenance["environment"]["slurm"]["SLURM_ARRAY_TASK_ID"] == str(job)
        # W&B: one group per sweep (the sweep folder's name), runs named by their overrides.
        records = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert b"ablation-7f3" in records and f"loss={loss}".encode() in records
    array_ids = {json.loads((sweep / str(j) / "provenance.json").read_text())["environment"]["slurm"]["SLURM_ARRAY_JOB_ID"] for j in (0, 1)}
    assert len(array_ids) == 1  # one array job


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout_s: float) -> None:
    csv = run_dir / "csv" / "metrics.csv"
    deadline = time.monotonic() + timeout_s
    while not (csv.is_file() and any(r.split(",")[0] == str(epoch) for r in csv.read_text().splitlines()[1:])):
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before epoch {epoch}")
        if time.monotonic() > deadline:
            pytest.fail(f"epoch {epoch} did not start within {timeout_s} s")
        time.sleep(0.1)


def test_time_limit_signal_saves_requeues_and_the_job_resumes(slurm_env, tiny_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    epochs, steps = 3, 20  # 5 volumes x 4 patches per epoch
    overrides = [
        *tiny(tiny_dataset, size=32, features="[8,16,32]"), "data.samples_per_volume=4",
        f"trainer.max_epochs={epochs}", "logger=csv", "+logger.csv.flush_logs_every_n_steps=1",
        "trainer.log_every_n_steps=1", "loss=dice",
    ]
    proc = subprocess.Popen(
        sweep_command(sweep, *overrides), env=job_env(slurm_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, cwd=REPO,
    )
    run_dir, job_id = sweep / "0", None
    try:
        wait_for_epoch(run_dir, 1, proc, timeout_s=120)
        # One sweep point: submitit submits a plain job, not an array.
        job_id = json.loads((run_dir / "provenance.json").read_text())["environment"]["slurm"]["SLURM_JOB_ID"]
        # What Slurm sends signal_delay_s before the time limit.
        subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True, timeout=30)
        output, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if job_id is not None:
            subprocess.run(["scancel", job_id], env=slurm_env, timeout=30)

    assert proc.returncode == 0, output[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "received SIGUSR2: stopping after this batch" in log
    assert "stopped by a signal at epoch 1" in log
    assert "requeued Slurm job: resuming" in log and "stage 'dice': resuming from" in log
    submitit_log = (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").read_text()
    assert f"Requeued job {job_id} (2 remaining timeouts)" in submitit_log
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == epochs * steps  # no step lost or repeated
    assert json.loads((run_dir / "summary.json").read_text())["test"]["n_cases"] == 2
    assert len(json.loads((run_dir / "provenance.json").read_text())["resumed"]) == 1
