"""wspet.losses.dice_ce_loss / DiceCELoss: Dice + cross-entropy against float64 references, ignored voxels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import PROPERTY, SEEDS, SHAPES, dice_reference, random_inputs
from wspet.losses import DiceCELoss, dice_ce_loss
from wspet.losses.dice_ce import IGNORE_INDEX


def bce_reference(p: np.ndarray, b: np.ndarray, counted: np.ndarray) -> float:
    p, b = p.astype(np.float64), b.astype(np.float64)
    terms = -(b * np.log(p) + (1 - b) * np.log(1 - p))
    return float((terms * counted).sum() / max(counted.sum(), 1))


@pytest.mark.parametrize("shape", SHAPES)
def test_without_ignored_voxels_it_is_dice_plus_bce(shape):
    _, p, b = random_inputs(sum(shape), shape)
    got = dice_ce_loss(p, b, dice_weight=1.0, ce_weight=0.5)
    expected = dice_reference(p.numpy(), b.numpy()) + 0.5 * bce_reference(p.numpy(), b.numpy(), np.ones(shape))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected, rel=1e-5)


@given(seed=SEEDS, share=st.floats(0.05, 0.6))
@PROPERTY
def test_ignored_voxels_neither_count_nor_get_a_gradient(seed, share):
    rng = np.random.default_rng(seed)
    _, p, b = random_inputs(seed % 1000, (2, 1, 5, 6, 4))
    ignored = torch.from_numpy(rng.random(b.shape) < share)
    target = torch.where(ignored, torch.full_like(b, IGNORE_INDEX), b)
    p = p.clone().requires_grad_(True)
    loss = dice_ce_loss(p, target)
    loss.backward()
    assert torch.all(p.grad[ignored] == 0)
    # Changing the prediction on ignored voxels changes nothing.
    other = torch.where(ignored, 1 - p.detach(), p.detach())
    assert dice_ce_loss(other, target).item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    counted = (~ignored).numpy()
    masked_p, masked_b = p.detach().numpy() * counted, b.numpy() * counted
    expected = dice_reference(masked_p, masked_b) + bce_reference(p.detach().numpy(), b.numpy(), counted)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_module_returns_terms_and_ignored_fraction():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2, :, :] = IGNORE_INDEX
    target[..., 2, 1:3, 1:3] = 1
    probs = torch.full_like(target, 0.5)
    terms = DiceCELoss(dice_weight=2.0, ce_weight=1.0)(None, probs, target)
    assert set(terms) == {"loss", "loss_dice", "loss_ce", "ignored_fraction"}
    assert terms["ignored_fraction"].item() == pytest.approx(0.5)
    assert terms["loss_ce"].item() == pytest.approx(np.log(2), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(2 * terms["loss_dice"].item() + terms["loss_ce"].item(), rel=1e-6)


def test_saturated_wrong_predictions_stay_finite():
    target = torch.ones(1, 1, 2, 2, 2)
    loss = dice_ce_loss(torch.zeros_like(target), target)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1.0 + 100.0)  # Dice 1, BCE clamped at -log(0) = 100


@pytest.mark.parametrize("value, message", [(3.0, "value 3.0"), (-1.0, "value -1.0")])
def test_other_target_values_are_refused(value, message):
    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=message):
        dice_ce_loss(torch.full_like(target, 0.5), target)


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="ce_weight"):
        DiceCELoss(ce_weight=-1.0)


@given(seed=SEEDS)
@PROPERTY
def test_batch_dice_is_dice_over_the_batch_as_one_volume(seed):
    _, p, b = random_inputs(seed % 1000, (3, 1, 4, 5, 3))
    b[1] = 0  # a patch without lesion: per sample it would get a Dice term of its own
    got = dice_ce_loss(p, b, ce_weight=0.0, batch_dice=True)
    assert got.item() == pytest.approx(dice_reference(p.numpy().reshape(1, -1), b.numpy().reshape(1, -1)), rel=1e-5)
    # With one sample the two are the same.
    assert dice_ce_loss(p[:1], b[:1], batch_dice=True).item() == pytest.approx(dice_ce_loss(p[:1], b[:1]).item(), rel=1e-6)


def test_batch_dice_counts_a_lesion_free_patch_as_false_positives():
    target = torch.zeros(2, 1, 2, 2, 2)
    target[0, 0, 0] = 1  # 4 lesion voxels in the first patch, none in the second
    probs = target.clone()
    probs[1, 0, 0, 0, 0] = 1.0  # one false positive voxel in the lesion-free patch
    per_sample = DiceCELoss(ce_weight=0.0)(None, probs, target)["loss_dice"].item()
    batch = DiceCELoss(ce_weight=0.0, batch_dice=True)(None, probs, target)["loss_dice"].item()
    assert per_sample == pytest.approx((0.0 + 1 / 8) / 2)  # the empty patch's mean(p)
    assert batch == pytest.approx(1 / (5 + 4))  # FP / (sum p + sum b)


def test_batch_dice_must_be_a_boolean():
    with pytest.raises(ValueError, match="batch_dice must be true or false, got 'yes'"):
        DiceCELoss(batch_dice="yes")
    with pytest.raises(ValueError, match="batch_dice must be true or false, got 'no'"):
        dice_ce_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2), batch_dice="no")
