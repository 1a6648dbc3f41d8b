"""The LightningModule: the 3D U-Net, the composite loss, and what is logged about them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchio as tio
from hydra.utils import instantiate
from torchmetrics import MeanMetric

from wspet.data.preprocessing import Preprocessing
from wspet.model.unet3d import UNet3D

ARGUMENTS = ("net", "loss", "supervision", "optimizer", "channels_last", "preprocessing", "training_spacing")


class LesionSegmenter(L.LightningModule):
    """Train a :class:`UNet3D` on boxes (weak) or labels (full) with a loss from ``conf/loss``.

    Args:
        net: keyword arguments of :class:`UNet3D` (``in_channels``, ``features``).
        loss: the ``module`` node of a ``conf/loss`` file (a ``_target_`` and its parameters).
        supervision: ``box`` or ``label``: which mask of the batch the loss is given.
        optimizer: a ``_target_`` optimizer config (``torch.optim.SGD``, ...) without params.
        channels_last: use ``torch.channels_last_3d`` memory, faster for 3D convolutions.
        preprocessing: how inputs were prepared in training
            (:meth:`wspet.data.preprocessing.Preprocessing.as_dict`), so inference repeats it;
            ``None`` is per-volume z-scores at native spacing.
        training_spacing: median voxel spacing in mm of the training volumes as read, so that
            inference can warn about a scan far off it (``None``: unknown).

    All arguments are plain config values, saved in the checkpoint, so
    ``LesionSegmenter.load_from_checkpoint(path)`` rebuilds the network alone.
    """

    def __init__(
        self,
        net: dict,
        loss: dict,
        supervision: str = "box",
        optimizer: dict | None = None,
        channels_last: bool = False,
        preprocessing: dict | None = None,
        training_spacing: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.net = UNet3D(**net)
        self.loss_fn = instantiate(loss)
        self.supervision = supervision
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.val_dice = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_empty = MeanMetric()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, 1, D, H, W)`` (float32) for a normalised image ``(B, 1, D, H, W)``."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return self.net.probabilities(image)

    def _loss_terms(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = batch["image"][tio.DATA]
        target = batch[self.supervision][tio.DATA].float()
        probs = self(image)
        return probs, self.loss_fn(image.float(), probs, target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        probs, terms = self._loss_terms(batch)
        batch_size = probs.shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss")
        # The share of voxels predicted as lesion: it drops to 0 when training collapses.
        self.log("train/foreground_fraction", (probs.detach() > 0.5).float().mean(), batch_size=batch_size)
        return terms["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        probs, terms = self._loss_terms(batch)
        self.val_loss.update(terms["loss"].detach())
        prediction = probs.detach() > 0.5
        self.val_empty.update(torch.tensor(float(not prediction.any())))
        if "label" in batch:
            self.val_dice.update(hard_dice(prediction, batch["label"][tio.DATA] > 0))

    def on_validation_epoch_end(self) -> None:
        # MeanMetric reduces across processes, so under DDP every rank logs the same value.
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/empty_fraction", self.val_empty.compute())
        # Decided across ranks: a rank alone skipping the collective compute would hang DDP.
        labelled = self.trainer.strategy.reduce(
            torch.tensor(float(self.val_dice.update_count > 0), device=self.device), reduce_op="max"
        )
        if labelled > 0:
            self.log("val/dice", self.val_dice.compute(), prog_bar=True)
        for metric in (self.val_loss, self.val_dice, self.val_empty):
            metric.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "LesionSegmenter":
        """Load a model written by ``train.py``; a clear error instead of a state-dict traceback.

        Raises FileNotFoundError for a missing file and ValueError naming the file when it is not
        a readable checkpoint, not a wspet checkpoint, or its weights do not fit its network
        config (the missing and unexpected keys are listed).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint does not exist")
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:  # pickle, zip and torch errors all mean the same to a user
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not isinstance(hparams, dict) or "net" not in hparams or "state_dict" not in checkpoint:
            raise ValueError(f"{path}: not a wspet checkpoint (no 'net' hyper-parameters or no state_dict)")
        model = cls(**{k: v for k, v in hparams.items() if k in ARGUMENTS})
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:  # missing, unexpected or differently shaped weights
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise ValueError(f"{path}: weights do not fit the network config net={hparams['net']}: {first}") from None
        return model.to(map_location)

    def configure_optimizers(self) -> Any:
        config = self.hparams.optimizer or {"_target_": "torch.optim.SGD", "lr": 1e-5, "momentum": 0.9}
        return instantiate(config, params=self.parameters())


def hard_dice(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice of two boolean masks ``(B, 1, D, H, W)``, averaged over the batch; 1 when both are empty."""
    dims = tuple(range(1, prediction.ndim))
    overlap = (prediction & truth).sum(dims).float()
    total = prediction.sum(dims).float() + truth.sum(dims).float()
    dice = torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
    return dice.mean()
