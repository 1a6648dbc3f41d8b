"""The LightningModule: the 3D U-Net, the composite loss, and what is logged about them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchio as tio
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MeanMetric

from wspet.data.preprocessing import Preprocessing
from wspet.losses.deep_supervision import deep_supervision_loss
from wspet.model.checkpoint import check_target, load_checkpoint, loss_classes
from wspet.model.flips import AUTO_MIRROR, model_mirror_axes
from wspet.model.lr_schedule import lr_schedule
from wspet.model.orientation import model_orientation
from wspet.model.unet3d import UNet3D

# A validation volume predicted lesion in more than this share of its voxels counts as "full"
# (val/full_fraction): the all-foreground collapse the collapse guard watches for.
FULL_SHARE = 0.5

ARGUMENTS = (
    "net", "loss", "supervision", "optimizer", "channels_last", "preprocessing", "training_spacing", "scheduler",
    "training_flips", "training_orientation",
)


class LesionSegmenter(L.LightningModule):
    """Train a :class:`UNet3D` on boxes (weak) or labels (full) with a loss from ``conf/loss``.

    Args:
        net: keyword arguments of :class:`UNet3D` (``in_channels``, ``features``).
        loss: the ``module`` node of a ``conf/loss`` file (a ``_target_`` naming a class of
            ``wspet.losses`` and its plain parameters); ``None`` for a model that only predicts.
        supervision: ``box``, ``pseudo`` or ``label``: which mask of the batch the loss is given.
        optimizer: a ``_target_`` optimizer config (``torch.optim.SGD``, ...) without params.
        channels_last: use ``torch.channels_last_3d`` memory, faster for 3D convolutions.
        preprocessing: how inputs were prepared in training
            (:meth:`wspet.data.preprocessing.Preprocessing.as_dict`), so inference repeats it;
            ``None`` is per-volume z-scores at native spacing.
        training_spacing: median voxel spacing in mm of the training volumes as read, so that
            inference can warn about a scan far off it (``None``: unknown).
        scheduler: ``name``, ``warmup_steps`` (and ``power``) of
            :func:`~wspet.model.lr_schedule.lr_schedule`, stepped every optimiser step over the
            trainer's step budget; ``None`` keeps the learning rate constant.
        training_flips: the volume axes that training's augmentation flipped (``data.flip_axes``;
            empty when ``flip_probability`` is 0), so that test-time mirroring (``mirror_axes: auto``)
            shows the network only views it was taught (``None``: unknown, an older checkpoint).
        training_orientation: the axis codes of the training volumes (``["L", "P", "S"]``; the
            most common where they differ), so that prediction turns a scan stored in another axis
            order to them (:mod:`wspet.model.orientation`; ``None``: unknown, an older checkpoint).
        init_from: a checkpoint whose network weights start training (the paper's second stage);
            its network config must equal ``net``. Not saved in the checkpoint.

    ``conf/model`` builds this class by ``_target_`` (``wspet.training.stage.build_model`` adds the
    loss and the data's preprocessing). All arguments but ``init_from`` are plain config values,
    saved in the checkpoint, so ``LesionSegmenter.from_checkpoint(path)`` rebuilds the network
    alone. Use it, not Lightning's ``load_from_checkpoint``, which would build whatever loss the
    file names (docs/security.md).
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
        scheduler: dict | None = None,
        training_flips: list[int] | None = None,
        training_orientation: list[str] | None = None,
        init_from: str | Path | None = None,
    ) -> None:
        super().__init__()
        # Built by Hydra, these may arrive as config containers; the checkpoint must hold plain values.
        net, loss, optimizer, scheduler, preprocessing, training_spacing, training_flips, training_orientation = (
            _plain(v) for v in (net, loss, optimizer, scheduler, preprocessing, training_spacing, training_flips,
                                training_orientation)
        )
        self.save_hyperparameters(ignore=["init_from"])
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.net = UNet3D(**net)
        self.loss_fn = build_loss(loss) if loss is not None else None  # None: inference only
        self.supervision = supervision
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last_3d)
        self.val_dice = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_empty = MeanMetric()
        self.val_full = MeanMetric()
        self.val_box_agreement = MeanMetric()
        self.val_box_dice = MeanMetric()
        if init_from:
            self.load_network(init_from)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, 1, D, H, W)`` (float32) for a normalised image ``(B, 1, D, H, W)``.

        Under bf16 autocast on a CPU the network switches to ``channels_last_3d`` (weights and
        activations) at its first call, as ``channels_last=True`` would have.
        """
        return self.net.probabilities(self._in_memory_format(image))

    def multiscale_probabilities(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Probabilities (float32) of the top head ``(B, 1, D, H, W)``, then of each deep-supervision
        head ``(B, 1, D / 2**s, H / 2**s, W / 2**s)``, ``s = 1, 2, ...`` (``net.deep_supervision``)."""
        return [torch.sigmoid(logits.float()) for logits in self.net.multiscale_logits(self._in_memory_format(image))]

    def _in_memory_format(self, image: torch.Tensor) -> torch.Tensor:
        device = image.device.type
        bf16_cpu = device == "cpu" and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        if bf16_cpu and not self.channels_last:
            # bf16 convolutions on AVX512-BF16/AMX CPUs ran 1.2-2x faster with channels_last_3d weights and
            # activations, and no faster with the activations alone (docs/performance.md). Converted in
            # place, so the optimiser keeps the same parameters.
            self.net.to(memory_format=torch.channels_last_3d)
            self.channels_last = True
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        return image

    def _loss_terms(self, batch: dict, deep: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Top-scale probabilities and the loss terms; ``deep`` adds the deep-supervision heads' losses."""
        image = batch["image"][tio.DATA]
        target = batch[self.supervision][tio.DATA].float()
        scales = self.multiscale_probabilities(image) if deep and len(self.net.auxiliary_heads) else [self(image)]
        # The network runs under the trainer's autocast, the loss outside it on every device: the
        # losses are written for float32 probabilities, and CUDA autocast refuses
        # binary_cross_entropy outright (loss=pseudo, the default, failed its first step on a GPU).
        with torch.autocast(image.device.type, enabled=False):
            if len(scales) > 1:
                return scales[0], deep_supervision_loss(self.loss_fn, image.float(), scales, target)
            return scales[0], self.loss_fn(image.float(), scales[0], target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Validation (model selection, the convergence check) sees the top scale's loss alone.
        probs, terms = self._loss_terms(batch, deep=True)
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
        self.val_empty.update((~prediction.any()).float())
        # No lesion fills most of a scan: more than half of it predicted lesion is the other collapse.
        self.val_full.update((prediction.float().mean() > FULL_SHARE).float())
        # How much the prediction is still the box: a weak model that learnt nothing else stays near 1.
        self.val_box_agreement.update(hard_dice(prediction, batch["box"][tio.DATA] > 0))
        if "label" in batch:
            label = batch["label"][tio.DATA] > 0
            self.val_dice.update(hard_dice(prediction, label))
            # What predicting the boxes alone would score: a weak model should end above it.
            self.val_box_dice.update(hard_dice(batch["box"][tio.DATA] > 0, label))

    def on_validation_epoch_end(self) -> None:
        # MeanMetric reduces across processes, so under DDP every rank logs the same value.
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/empty_fraction", self.val_empty.compute())
        self.log("val/full_fraction", self.val_full.compute())
        self.log("val/box_agreement", self.val_box_agreement.compute())
        # Decided across ranks: a rank alone skipping the collective compute would hang DDP.
        labelled = self.trainer.strategy.reduce(
            torch.tensor(float(self.val_dice.update_count > 0), device=self.device), reduce_op="max"
        )
        if labelled > 0:
            self.log("val/dice", self.val_dice.compute(), prog_bar=True)
            self.log("val/box_dice", self.val_box_dice.compute())
        for metric in (self.val_loss, self.val_dice, self.val_empty, self.val_full, self.val_box_agreement, self.val_box_dice):
            metric.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "LesionSegmenter":
        """Load a model written by ``train.py`` for prediction; nothing the file names is run.

        The file is read by :func:`load_checkpoint` (weights-only, its loss and optimizer checked
        against the allow-lists); the loss is not built, since predicting needs none. Raises
        FileNotFoundError for a missing file and ValueError naming the file when it is not a
        readable weights-only checkpoint, not a wspet checkpoint, names a loss or optimizer outside
        the allow-lists, holds bad ``training_flips`` or ``training_orientation``, or its weights do not fit its network config
        (missing and unexpected keys are listed).
        """
        checkpoint = load_checkpoint(path, map_location)
        hparams = checkpoint["hyper_parameters"]
        arguments = {k: v for k, v in hparams.items() if k in ARGUMENTS and k != "loss"}
        try:
            misfit = _weights_misfit(hparams["net"], checkpoint["state_dict"])
            if not misfit:
                model = cls(loss=None, **arguments)
                model_mirror_axes(model, AUTO_MIRROR)  # its training flips, read by test-time mirroring
                model_orientation(model)  # its axis codes, read by every prediction
        except (TypeError, ValueError) as error:  # e.g. an unknown U-Net argument
            raise ValueError(f"{path}: hyper-parameters do not build a wspet model: {error}") from None
        if misfit:
            raise ValueError(f"{path}: weights do not fit the network config net={hparams['net']}: {misfit}")
        try:
            model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:  # missing, unexpected or differently shaped weights
            first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise ValueError(f"{path}: weights do not fit the network config net={hparams['net']}: {first}") from None
        model.checkpoint_path = Path(path)  # for messages about this model
        return model.to(map_location)

    def load_network(self, path: str | Path) -> None:
        """Copy the U-Net weights of checkpoint ``path`` into this model; refuse a different network.

        Raises FileNotFoundError for a missing file, and ValueError naming the file and the first
        ``net`` setting that differs from this model's (or as :func:`load_checkpoint` does).
        """
        checkpoint = load_checkpoint(path)  # weights-only: nothing in the file runs (docs/security.md)
        # Checkpoints from before deep supervision existed had none.
        saved, wanted = ({"deep_supervision": False, **net} for net in (checkpoint["hyper_parameters"]["net"], self.hparams.net))
        for key in sorted(set(saved) | set(wanted)):
            if _list_or_value(saved.get(key)) != _list_or_value(wanted.get(key)):
                raise ValueError(
                    f"{path}: model.net.{key} is {saved.get(key)!r} in the checkpoint but {wanted.get(key)!r} in the config"
                )
        weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        self.net.load_state_dict(weights)

    def configure_optimizers(self) -> Any:
        config = self.hparams.optimizer or {"_target_": "torch.optim.SGD", "lr": 1e-5, "momentum": 0.9}
        optimizer = instantiate(config, params=self.parameters())
        schedule = self.hparams.get("scheduler")
        if not schedule:
            return optimizer
        scheduler = lr_schedule(optimizer, total_steps=self._scheduled_steps(), **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _scheduled_steps(self) -> int:
        """The optimiser steps the schedule spans: ``max_steps``, or the epochs' batches under an epoch budget."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            return trainer.max_steps
        if trainer.datamodule is None:
            return int(trainer.estimated_stepping_batches)
        # A throwaway loader's length: Lightning's own estimate builds the training loader before a
        # resumed run restores its position, and the resumed run then drew other batches.
        batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return max(1, batches * max(trainer.max_epochs, 1))


def _weights_misfit(net: Mapping, state_dict: Mapping) -> str | None:
    """The first network weight of ``state_dict`` missing, unexpected or of another shape than ``net`` builds.

    The network is built on the meta device, which allocates nothing: a file whose ``net`` asks for
    65536 feature maps per level would otherwise allocate hundreds of GB before its weights were read.
    """
    with torch.device("meta"):
        expected = {f"net.{name}": tuple(value.shape) for name, value in UNet3D(**net).state_dict().items()}
    given = {name: tuple(value.shape) for name, value in state_dict.items() if name.startswith("net.")}
    for name in sorted(set(expected) | set(given)):
        if name not in given:
            return f"missing weight {name} {expected[name]}"
        if name not in expected:
            return f"unexpected weight {name} {given[name]}"
        if given[name] != expected[name]:
            return f"weight {name} has shape {given[name]}, the config builds {expected[name]}"
    return None


def build_loss(spec: Mapping) -> torch.nn.Module:
    """The loss module a ``conf/loss`` ``module`` node names, once :func:`check_target` allows it."""
    check_target(spec, loss_classes(), "loss")
    return instantiate(dict(spec))


def _plain(value):
    """Config containers as plain dicts and lists: checkpoints hold plain values only."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _list_or_value(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def hard_dice(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice of two boolean masks ``(B, 1, D, H, W)``, averaged over the batch; 1 when both are empty."""
    dims = tuple(range(1, prediction.ndim))
    overlap = (prediction & truth).sum(dims).float()
    total = prediction.sum(dims).float() + truth.sum(dims).float()
    dice = torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
    return dice.mean()
