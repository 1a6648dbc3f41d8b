"""LesionSegmenter: deep supervision in training, the top head alone everywhere else."""

from __future__ import annotations

import pytest
import torch
import torchio as tio

from wspet.losses import DiceCELoss
from wspet.losses.deep_supervision import deep_supervision_loss
from wspet.model.module import LesionSegmenter

LOSS = {"_target_": "wspet.losses.DiceCELoss"}


def _batch() -> dict:
    torch.manual_seed(0)
    image = torch.randn(2, 1, 16, 16, 16)
    box = torch.zeros_like(image)
    box[..., 4:12, 4:12, 4:12] = 1
    pseudo = box.clone()
    pseudo[..., 4:6, :, :] = 2  # ignored voxels
    return {"image": {tio.DATA: image}, "box": {tio.DATA: box}, "pseudo": {tio.DATA: pseudo}}


def _model(deep_supervision: bool) -> LesionSegmenter:
    torch.manual_seed(1)
    net = {"features": [4, 8, 16, 32, 64], "deep_supervision": deep_supervision}
    return LesionSegmenter(net=net, loss=LOSS, supervision="pseudo")


def test_training_loss_sums_the_heads_and_every_head_learns():
    model, batch = _model(True), _batch()
    loss = model.training_step(batch, 0)
    image, target = batch["image"][tio.DATA], batch["pseudo"][tio.DATA]
    expected = deep_supervision_loss(DiceCELoss(), image, model.multiscale_probabilities(image), target)["loss"]
    top_only = DiceCELoss()(image, model(image), target)["loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(top_only.item(), rel=1e-3)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.auxiliary_heads.parameters())


def test_without_deep_supervision_the_training_loss_is_the_top_heads():
    model, batch = _model(False), _batch()
    image, target = batch["image"][tio.DATA], batch["pseudo"][tio.DATA]
    expected = DiceCELoss()(image, model(image), target)["loss"]
    assert model.training_step(batch, 0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_validation_loss_is_the_top_heads_so_runs_with_and_without_compare():
    model, batch = _model(True), _batch()
    model.validation_step(batch, 0)
    image, target = batch["image"][tio.DATA], batch["pseudo"][tio.DATA]
    expected = DiceCELoss()(image, model(image), target)["loss"]
    assert model.val_loss.compute().item() == pytest.approx(expected.item(), rel=1e-6)


def test_validation_scores_the_boxes_against_the_labels_beside_the_model():
    model, batch = _model(False), _batch()
    label = torch.zeros_like(batch["box"][tio.DATA])
    label[..., 6:10, 6:10, 6:10] = 1  # 64 voxels inside the 512-voxel box: Dice 2 * 64 / 576
    batch["label"] = {tio.DATA: label}
    model.validation_step(batch, 0)
    assert model.val_box_dice.compute().item() == pytest.approx(128 / 576)
    assert model.val_dice.update_count == 1


def test_validation_without_labels_scores_no_boxes():
    model = _model(False)
    model.validation_step(_batch(), 0)
    assert model.val_box_dice.update_count == 0


def test_a_checkpoint_saved_before_deep_supervision_starts_a_run_without_it(tmp_path):
    old = _model(False)
    hparams = dict(old.hparams)
    hparams["net"] = {"features": [4, 8, 16, 32, 64]}  # no deep_supervision key, as older checkpoints
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": old.state_dict()}, path)
    new = _model(False)
    new.load_network(path)
    assert all(torch.equal(a, b) for a, b in zip(new.net.state_dict().values(), old.net.state_dict().values()))


class _AutocastSpy(DiceCELoss):
    """DiceCELoss that records, at each call, whether autocast was on and the probabilities' dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, image, probs, target):
        self.calls.append((torch.is_autocast_enabled("cpu"), probs.dtype))
        return super().forward(image, probs, target)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_the_loss_runs_outside_the_trainers_autocast_in_float32(deep_supervision):
    # CUDA autocast refuses binary_cross_entropy; the rule is checked here under CPU autocast.
    model, batch = _model(deep_supervision), _batch()
    model.loss_fn = _AutocastSpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(batch, 0)
        model.validation_step(batch, 0)
    assert loss.dtype == torch.float32
    assert len(model.loss_fn.calls) == (1 + len(model.net.auxiliary_heads)) + 1  # training scales + validation
    assert len(model.net.auxiliary_heads) == (2 if deep_supervision else 0)
    assert set(model.loss_fn.calls) == {(False, torch.float32)}
