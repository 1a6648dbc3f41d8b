"""The project's Hydra Slurm launcher (conf/hydra/launcher/slurm.yaml) against a real local Slurm.

A stand-in Hydra app (hydra_app/app.py) replaces train.py: each sweep point writes its result
file, or sleeps so that a job can be cancelled while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submitit.slurm.slurm import SlurmInfoWatcher

pytestmark = pytest.mark.slurm

APP = Path(__file__).resolve().parent / "hydra_app" / "app.py"
# The launcher file's own values stay (gpus_per_node=1 included: the local cluster has fake
# GPUs) except what a 2-core test machine cannot give; timeout_min stays above signal_delay_s.
SMALL_JOBS = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


def _sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    # sys.executable is the venv's python; submitit runs the jobs with it too.
    return [sys.executable, str(APP), "-m", f"hydra.sweep.dir={sweep_dir}", *SMALL_JOBS, *overrides]


def _sacct_states(env: dict[str, str], array_id: str) -> dict[str, str]:
    """States of an array's tasks as submitit itself reads them from our sacct stand-in."""
    out = subprocess.run(
        ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", array_id],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    return {job: info["State"] for job, info in SlurmInfoWatcher().read_info(out).items()}


def test_sweep_runs_as_one_array_job(slurm_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        _sweep_cmd(sweep, "x=1,2"), env=slurm_env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr

    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [(r["x"], r["y"]) for r in results] == [(1, 10), (2, 20)]
    array_ids = {r["SLURM_ARRAY_JOB_ID"] for r in results}
    assert len(array_ids) == 1, results
    assert sorted(r["SLURM_ARRAY_TASK_ID"] for r in results) == ["0", "1"]

    array_id = array_ids.pop()
    assert _sacct_states(slurm_env, array_id) == {
        f"{array_id}_0": "COMPLETED",
        f"{array_id}_1": "COMPLETED",
    }
    # submitit's files live under the sweep dir, and sbatch got the launcher file's settings.
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    flags = ("--array=0-1%2", "--gpus-per-node=1", "--mem=1GB", "--requeue", "--signal=USR2@300", "--time=10")
    for flag in flags:
        assert f"#SBATCH {flag}\n" in script, flag
    assert (sweep / ".submitit" / f"{array_id}_0" / f"{array_id}_0_0_log.out").is_file()


def _wait_for_start(sweep: Path, proc: subprocess.Popen[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = sorted(sweep.glob("*/started.json"))
        if started:
            return json.loads(started[0].read_text())
        if proc.poll() is not None:
            pytest.fail(f"sweep exited ({proc.returncode}) before any job started")
        time.sleep(0.5)
    pytest.fail(f"no job started within {timeout_s} s")


def test_cancelled_job_fails_the_sweep_instead_of_hanging(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        _sweep_cmd(sweep, "x=1,2", "sleep_s=600"),
        env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    array_id = None
    try:
        array_id = _wait_for_start(sweep, proc, timeout_s=60)["SLURM_ARRAY_JOB_ID"]
        subprocess.run(["scancel", array_id], env=slurm_env, check=True, timeout=30)
        # Without sacct answering, submitit would wait for a result file forever.
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if array_id is not None:
            subprocess.run(["scancel", array_id], env=slurm_env, timeout=30)

    assert proc.returncode != 0
    assert f"Job {array_id}_0" in output
    assert "state: CANCELLED" in output
    assert not list(sweep.glob("*/result.json"))


def test_time_limit_signal_requeues_and_the_run_resumes(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        _sweep_cmd(sweep, "x=1,2", "sleep_s=600"),
        env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    array_id = None
    try:
        array_id = _wait_for_start(sweep, proc, timeout_s=60)["SLURM_ARRAY_JOB_ID"]
        time.sleep(2)  # let submitit install its signal handler in the other task too
        # What Slurm sends signal_delay_s before the time limit (submitit's own _interrupt does this).
        subprocess.run(["scancel", "--signal=USR2", array_id], env=slurm_env, check=True, timeout=30)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if array_id is not None:
            subprocess.run(["scancel", array_id], env=slurm_env, timeout=30)

    assert proc.returncode == 0, output
    # Requeued into the same run dirs, where the second attempt found the first's traces.
    results = [json.loads((sweep / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert [(r["x"], r["attempt"]) for r in results] == [(1, 2), (2, 2)]
    log = (sweep / ".submitit" / f"{array_id}_0" / f"{array_id}_0_0_log.out").read_text()
    # timeout_min=10 makes any USR2 a time-out: max_num_timeout=3 from the launcher file, one used.
    assert f"Requeued job {array_id}_0 (2 remaining timeouts)" in log
