"""What produced a run: the code's git commit and local changes, the packages, the machine and the command.

``write_provenance(run_dir)`` writes ``<run>/provenance.json`` and, when the checkout has changes,
``<run>/git.diff`` (``git diff HEAD``: staged and unstaged changes of tracked files), both atomically
(:mod:`wspet.io`). The resolved config is ``<run>/config.yaml``, written by ``train(cfg)``. Outside a git
checkout (an installed wheel, no ``git`` program) the git fields are null and ``git.reason`` says why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import wspet
from wspet.io import write_text

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
DIFF = "git.diff"
SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")


class GitUnavailable(Exception):
    """The code does not come from a git checkout this process can read."""


def _git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:
        raise GitUnavailable("no git program on PATH") from error
    except subprocess.TimeoutExpired as error:
        raise GitUnavailable(f"git {' '.join(args)} timed out") from error
    if done.returncode != 0:
        raise GitUnavailable(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def git_state(code_file: str | os.PathLike = wspet.__file__) -> tuple[dict, str]:
    """``(record, diff)`` of the git checkout that ``code_file`` is tracked in.

    ``record`` holds ``commit``, ``branch``, ``dirty``, ``diff_sha256``, ``untracked`` (names only; their
    content is not kept) and ``root``; ``diff`` is ``git diff HEAD`` ("" when clean). Without a checkout
    that tracks ``code_file`` (e.g. wspet installed from a wheel, possibly inside another repository)
    every field is null and ``reason`` says why, and ``diff`` is "".
    """
    code_file = Path(code_file).resolve()
    try:
        root = Path(_git(code_file.parent, "rev-parse", "--show-toplevel").strip())
        _git(root, "ls-files", "--error-unmatch", str(code_file.relative_to(root)))
        commit = _git(root, "rev-parse", "HEAD").strip()
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
        diff = _git(root, "diff", "HEAD")
        untracked = _git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    except (GitUnavailable, ValueError) as error:
        reason = str(error) if isinstance(error, GitUnavailable) else f"{code_file} is outside the repository"
        none = dict.fromkeys(("commit", "branch", "dirty", "diff_sha256", "untracked", "root"))
        return {**none, "reason": f"{code_file.parent} is not a git checkout of wspet ({reason})"}, ""
    record = {
        "commit": commit,
        "branch": branch,
        "dirty": bool(diff) or bool(untracked),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "untracked": untracked,
        "root": str(root),
        "reason": None,
    }
    return record, diff


def package_versions() -> dict[str, str]:
    """Every installed distribution's version, by lower-case name."""
    versions = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions[name.lower()] = distribution.version
    return dict(sorted(versions.items()))


def environment() -> dict:
    """The interpreter, torch build, accelerators, host, command line and Slurm job of this process."""
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "slurm": {k: os.environ[k] for k in SLURM_KEYS if k in os.environ},
    }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_provenance(run_dir: str | os.PathLike, resumed: bool = False) -> dict:
    """Write ``<run>/provenance.json`` (and ``<run>/git.diff`` when the checkout has changes); return the record.

    A resumed run keeps the first attempt's record and appends ``{time, git, environment}`` to its
    ``resumed`` list, warning when the code changed between attempts (another commit or diff).
    """
    run_dir = Path(run_dir)
    path = run_dir / PROVENANCE
    git, diff = git_state()
    if resumed and path.is_file():
        record = json.loads(path.read_text())
        first = record.get("git", {})
        if (first.get("commit"), first.get("diff_sha256")) != (git["commit"], git["diff_sha256"]):
            log.warning(
                "%s: the code changed since the run started (commit %s, diff %s -> commit %s, diff %s)",
                run_dir, first.get("commit"), first.get("diff_sha256"), git["commit"], git["diff_sha256"],
            )
        record.setdefault("resumed", []).append({"time": _now(), "git": git, "environment": environment()})
    else:
        record = {
            "time": _now(),
            "wspet": _version("wspet"),
            "git": git,
            "environment": environment(),
            "packages": package_versions(),
            "resumed": [],
        }
        if diff:
            write_text(run_dir / DIFF, diff)
    write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
