"""trainer=ddp on two CPU processes (gloo): validation Dice reduced over both ranks, rank 0 alone writes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchio as tio
from omegaconf import OmegaConf

from wspet.data.datamodule import PetDataModule
from wspet.model.module import LesionSegmenter, hard_dice
from wspet.training.stage import build_datamodule

REPO = Path(__file__).resolve().parents[1]


def ddp_command(data_root: Path, run_dir: Path) -> list[str]:
    """tests/conftest.py's tiny settings on 16^3 crops; 3 training and 3 validation volumes."""
    return [
        sys.executable, str(REPO / "train.py"),
        f"data.root={data_root}", "data.phantom=null", "data.volume_size=[16,16,16]", "data.patch_size=[16,16,16]",
        "data.batch_size=1", "data.samples_per_volume=1", "data.queue_length=4", "data.val_fraction=0.5",
        "model.net.features=[4,8,16]", "trainer.enable_progress_bar=false", "logger=csv",
        "evaluate.window=[16,16,16]", "evaluate.overlap=[0,0,0]", "loss=fs",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
        "trainer.precision=32-true",  # the single-process check below computes in float32
        f"hydra.run.dir={run_dir}",
    ]


def single_process_val_dice(run_dir: Path) -> list[float]:
    """Each validation volume's Dice from the run's last.ckpt, computed by this one process."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = build_datamodule(cfg)
    data.setup("fit")
    model = LesionSegmenter.from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    dice = []
    with torch.no_grad():
        for batch in data.val_dataloader():
            prediction = model(batch["image"][tio.DATA]) > 0.5
            dice.append(float(hard_dice(prediction, batch["label"][tio.DATA] > 0)))
    return dice


def test_two_cpu_processes_log_the_dice_of_all_validation_volumes(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(ddp_command(tiny_dataset, run_dir), capture_output=True, text=True, timeout=400, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert "distributed_backend=gloo" in output

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    logged = [float(r["val/dice"]) for r in rows if r.get("val/dice")]
    assert len(logged) == 1  # one epoch, logged once: by rank 0 only

    per_volume = single_process_val_dice(run_dir)
    assert len(per_volume) == 3  # rank 0 validated volumes 0 and 2, rank 1 volume 1
    assert logged[0] == pytest.approx(sum(per_volume) / 3, abs=1e-6)
    if len(set(per_volume)) > 1:  # the mean over all volumes is neither rank 0's share nor a padded split
        assert logged[0] != pytest.approx((per_volume[0] + per_volume[2]) / 2, abs=1e-6)
        padded = per_volume[0] * 2 + per_volume[1] + per_volume[2]  # DistributedSampler repeats volume 0
        assert logged[0] != pytest.approx(padded / 4, abs=1e-6)

    # Evaluation ran once, on rank 0; rank 1 wrote nothing but Hydra's log of its process.
    assert output.count("Test results of stage 'fs'") == 1
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == ["hn_006_mask.nii.gz", "hn_007_mask.nii.gz"]
    written = {p.name for p in run_dir.iterdir()} - {"git.diff", "overlays.png"}  # git.diff: dirty checkouts only
    assert written == {
        ".hydra", "checkpoints", "config.yaml", "csv", "predictions", "provenance.json", "stage.json",
        "summary.json", "test_metrics.csv", "train.log", "train_ddp_process_1.log",
    }


class FakeTrainer:
    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.current_epoch = rank, world, 0


def test_validation_volumes_are_split_without_repeats(tiny_dataset):
    data = PetDataModule(tiny_dataset, volume_size=(16, 16, 16), patch_size=(16, 16, 16), val_fraction=0.5)
    data.setup("fit")
    names = []
    for rank in (0, 1):
        data.trainer = FakeTrainer(rank, 2)
        names.append([batch["name"][0] for batch in data.val_dataloader()])
    assert len(names[0]) == 2 and len(names[1]) == 1
    assert sorted(names[0] + names[1]) == sorted(s["name"] for s in data.val_subjects)
    data.trainer = FakeTrainer(0, 4)
    with pytest.raises(ValueError, match="3 validation volume\\(s\\) for 4 DDP processes"):
        data.val_dataloader()
