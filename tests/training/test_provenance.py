"""What a run records about itself (commit, diff, packages), that a seed reproduces it, and its W&B names."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

import wspet
from wspet.training.provenance import git_state, write_provenance
from wspet.training.experiment import train

REPO = Path(wspet.__file__).resolve().parents[1]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_run_folder_records_commit_diff_and_packages(tmp_path):
    record = write_provenance(tmp_path)
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved == record
    assert saved["git"]["commit"] == git("rev-parse", "HEAD").strip()
    # The installed distribution's version: a CUDA image's torch 2.11.0 reports 2.11.0+cu130 at run time.
    assert saved["packages"]["torch"] == metadata.version("torch")
    assert saved["environment"]["torch"] == torch.__version__
    diff = git("diff", "HEAD")
    assert saved["git"]["dirty"] == bool(diff or saved["git"]["untracked"])
    if diff:
        assert (tmp_path / "git.diff").read_text() == diff
    else:
        assert not (tmp_path / "git.diff").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"provenance.json", *(["git.diff"] if diff else [])})


def test_resumed_attempts_are_appended(tmp_path):
    first = write_provenance(tmp_path)
    write_provenance(tmp_path, resumed=True)
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved["time"] == first["time"] and saved["packages"] == first["packages"]
    assert [a["git"]["commit"] for a in saved["resumed"]] == [first["git"]["commit"]]


def test_outside_a_git_checkout_the_git_fields_are_null(tmp_path, monkeypatch):
    code = tmp_path / "site-packages" / "wspet" / "__init__.py"
    code.parent.mkdir(parents=True)
    code.write_text("")
    record, diff = git_state(code)
    assert record["commit"] is None and diff == ""
    assert "is not a git checkout of wspet" in record["reason"]

    git("init", "-q", cwd=tmp_path)  # a repository that does not track the code (a venv inside a repo)
    record, _ = git_state(code)
    assert record["commit"] is None and "did not match any file" in record["reason"]

    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    record, _ = git_state(wspet.__file__)
    assert record["commit"] is None and "no git program on PATH" in record["reason"]
    write_provenance(tmp_path / "run")  # still writes its record
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["git"]["commit"] is None


def test_deterministic_runs_with_one_seed_agree(train_config, tmp_path):
    overrides = ["loss=dice", "trainer.deterministic=true", "trainer.max_epochs=2", "trainer.limit_train_batches=3"]
    summaries = [train(train_config(tmp_path / name, overrides)) for name in ("a", "b")]
    assert summaries[0]["test"] == summaries[1]["test"]
    weights = [torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for n in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = train(train_config(tmp_path / "c", [*overrides, "seed=1"]))
    assert other["test"] != summaries[0]["test"]


@pytest.fixture
def multirun_job():
    """Hydra's globals as in job 1 of ``python train.py -m ... hydra.sweep.dir=outputs/multiruns/ablation``."""
    hydra = OmegaConf.structured(HydraConf)
    hydra.mode = RunMode.MULTIRUN
    hydra.sweep.dir = "outputs/multiruns/ablation"
    hydra.job.override_dirname = "loss=fs,seed=1"
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))
    yield
    HydraConfig.instance().cfg = None


def test_wandb_groups_a_sweep_and_names_runs_by_their_overrides(train_config, tmp_path, multirun_job):
    logger = train_config(tmp_path, ["logger=default", "loss=fs", "seed=1"]).logger.wandb
    assert (logger.group, logger.name) == ("ablation", "loss=fs,seed=1")


def test_single_runs_keep_experiment_group_and_seed_name(train_config, tmp_path):
    logger = train_config(tmp_path, ["logger=default", "loss=fs", "seed=1"]).logger.wandb
    assert (logger.group, logger.name) == ("fs", "fs-seed1")
