"""Shared fixtures: tiny phantom datasets in tmp_path and composed Hydra configs with CPU limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from wspet.datasets.phantom import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
TINY_SHAPE = (32, 32, 32)

os.environ.setdefault("WANDB_MODE", "disabled")  # tests never reach for an account
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 6 + 2 case phantom set of 32^3 volumes, made once per test session."""
    root = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom_dataset(root, n_train=6, n_test=2, seed=3, shape=TINY_SHAPE)
    return root


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def tiny_train_config(data_root: Path, out_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The train config made small: 32^3 volumes, a 3-level U-Net of 8..32 features, 1 epoch, CPU."""
    cfg = compose_config(
        "train",
        [
            f"data.root={data_root}",
            "data.phantom=null",
            "data.volume_size=[32,32,32]",
            "data.patch_size=[32,32,32]",
            "data.batch_size=1",
            "data.samples_per_volume=1",
            "data.queue_length=4",
            "model.net.features=[8,16,32]",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "evaluate.window=[32,32,32]",
            "evaluate.overlap=[0,0,0]",
            *(overrides or []),
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


@pytest.fixture
def train_config(tiny_dataset):
    """``train_config(out_dir, overrides)``: the tiny train config on the session's tiny dataset."""

    def make(out_dir: Path, overrides: list[str] | None = None) -> DictConfig:
        return tiny_train_config(tiny_dataset, out_dir, overrides)

    return make


@pytest.fixture
def config_on():
    """``config_on(data_root, out_dir, overrides)``: the tiny train config on another dataset."""
    return tiny_train_config
