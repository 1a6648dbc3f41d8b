"""wspet.losses.deep_supervision: nnU-Net's weights, targets sampled per scale, the top scale's terms kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import PROPERTY
from wspet.losses import CompositeLoss, DiceCELoss
from wspet.losses.deep_supervision import deep_supervision_loss, deep_supervision_weights
from wspet.losses.dice_ce import IGNORE_INDEX


@given(scales=st.integers(1, 6))
@PROPERTY
def test_weights_halve_per_scale_and_sum_to_one(scales):
    weights = deep_supervision_weights(scales)
    assert len(weights) == scales and sum(weights) == pytest.approx(1.0)
    assert all(coarse == pytest.approx(fine / 2) for fine, coarse in zip(weights, weights[1:]))


def test_no_scale_is_refused():
    with pytest.raises(ValueError, match="at least one scale, got 0"):
        deep_supervision_weights(0)


def _pseudo_label() -> torch.Tensor:
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 2:6, 2:6, 2:6] = IGNORE_INDEX
    target[..., 3:5, 3:5, 3:5] = 1
    return target


def test_it_is_the_weighted_sum_of_the_loss_at_each_scale_with_nearest_targets():
    torch.manual_seed(0)
    target, image = _pseudo_label(), torch.randn(1, 1, 8, 8, 8)
    probs = [torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 2, 2, 2)]
    loss = DiceCELoss()
    terms = deep_supervision_loss(loss, image, probs, target)
    half = F.interpolate(target, size=(4, 4, 4), mode="nearest-exact")
    quarter = F.interpolate(target, size=(2, 2, 2), mode="nearest-exact")
    # Sampled, not averaged: the lesion and ignore values survive as they are.
    assert set(half.unique().tolist()) == {0.0, 1.0, 2.0}
    expected = (
        4 * loss(None, probs[0], target)["loss"] + 2 * loss(None, probs[1], half)["loss"] + loss(None, probs[2], quarter)["loss"]
    ) / 7
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["loss_top"].item() == pytest.approx(loss(None, probs[0], target)["loss"].item(), rel=1e-6)
    assert terms["ignored_fraction"].item() == pytest.approx(loss(None, probs[0], target)["ignored_fraction"].item())


def test_a_loss_that_reads_the_image_gets_it_averaged_to_each_scale():
    torch.manual_seed(1)
    box = torch.zeros(1, 1, 8, 8, 8)
    box[..., 1:7, 1:7, 1:7] = 1
    image = torch.randn(1, 1, 8, 8, 8)
    probs = [torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 4, 4, 4)]
    loss = CompositeLoss()
    terms = deep_supervision_loss(loss, image, probs, box)
    coarse = loss(F.avg_pool3d(image, 2), probs[1], F.interpolate(box, size=(4, 4, 4), mode="nearest-exact"))["loss"]
    expected = (2 * loss(image, probs[0], box)["loss"] + coarse) / 3
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_every_head_gets_a_gradient():
    target, image = _pseudo_label(), torch.randn(1, 1, 8, 8, 8)
    probs = [torch.rand(1, 1, 8, 8, 8).requires_grad_(), torch.rand(1, 1, 4, 4, 4).requires_grad_()]
    deep_supervision_loss(DiceCELoss(), image, probs, target)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probs)
