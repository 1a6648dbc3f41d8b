"""Fixtures for the Slurm launcher tests: a real single-node cluster from scripts/local_slurm.sh.

The tests are marked `slurm`; they need root and either Slurm installed or apt-get to install it,
and are skipped, with the reason, where that is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
# local_slurm.sh's exit status for "Slurm missing and not installable here".
CANNOT_INSTALL = 3


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject.toml lists it (needed there too for --strict-markers outside this dir).
    config.addinivalue_line("markers", "slurm: needs a local Slurm cluster (root + apt)")


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def _client_env() -> dict[str, str]:
    """os.environ plus the `export NAME=VALUE` lines of `local_slurm.sh env` (SLURM_CONF, and a
    PATH that puts the sacct stand-in first)."""
    env = dict(os.environ)
    for line in _script("env", timeout=30).stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("$PATH", env.get("PATH", ""))
    return env


@pytest.fixture(scope="session")
def slurm_env() -> Iterator[dict[str, str]]:
    """Environment for talking to a running local cluster; starts it for the session and stops it
    afterwards, unless it was already running (then it is left as found)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("local Slurm needs root (SlurmUser=root, munged as the munge user)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    was_running = _script("status", timeout=60).returncode == 0
    # A cold start may include apt-get install; a warm one takes about a second.
    started = _script("start", timeout=900)
    try:
        if started.returncode == CANNOT_INSTALL:
            pytest.skip(f"cannot install Slurm here: {started.stderr.strip()}")
        if started.returncode != 0:
            pytest.fail(f"local_slurm.sh start failed:\n{started.stderr}")
        yield _client_env()
    finally:
        if not was_running:
            stopped = _script("stop", timeout=120)
            assert stopped.returncode == 0, stopped.stderr
