"""wspet.losses.dice_loss / DiceLoss against a float64 NumPy version of eq. (2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from tests.losses.helpers import PROPERTY, SHAPES, autocast_and_widened, box_mask, dice_reference, extreme_inputs
from tests.losses.helpers import random_inputs, value_and_grad
from wspet.losses import DiceLoss, dice_loss


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_matches_numpy_reference(shape):
    _, p, b = random_inputs(sum(shape), shape)
    got = dice_loss(p, b)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(dice_reference(p.numpy(), b.numpy()), rel=1e-5)


def test_dice_matches_reference_at_paper_volume_size():
    # 160 x 160 x 128 is the paper's network input; float32 sums must stay within 1e-5 relative.
    rng = np.random.default_rng(1)
    shape = (1, 1, 160, 160, 128)
    p = rng.random(shape, dtype=np.float32) * 0.2
    b = box_mask(shape, np.s_[..., 60:90, 50:95, 40:70]).numpy()
    got = dice_loss(torch.from_numpy(p), torch.from_numpy(b)).item()
    assert got == pytest.approx(dice_reference(p, b), rel=1e-5)


def test_dice_perfect_and_disjoint_predictions():
    b = box_mask((1, 1, 4, 4, 4), np.s_[..., 1:3, 1:3, 1:3])
    assert dice_loss(b.clone(), b).item() == pytest.approx(0.0, abs=1e-7)
    assert dice_loss(1 - b, b).item() == pytest.approx(1.0, abs=1e-7)


def test_dice_gradcheck_float64():
    _, p, b = random_inputs(2, (2, 1, 3, 4, 3), 0.05, 0.95, torch.float64)
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, b), (p.requires_grad_(True),))


def test_empty_target_gives_mean_prob_and_gradient_toward_background():
    rng = np.random.default_rng(3)
    shape = (2, 1, 4, 4, 4)
    p = torch.tensor(rng.uniform(0.1, 0.9, shape), dtype=torch.float32, requires_grad=True)
    b = box_mask(shape, np.s_[0, :, 1:3, 1:3, 1:3])  # sample 1 has no lesion
    loss = dice_loss(p, b)
    expected = 0.5 * (dice_reference(p.detach().numpy()[:1], b.numpy()[:1]) + p.detach()[1].mean().item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad_empty = p.grad[1]
    # d mean(p) / dp_i = 1 / N per voxel, halved by the batch mean: a plain, unscaled push toward 0.
    assert torch.allclose(grad_empty, torch.full_like(grad_empty, 0.5 / 64))
    assert grad_empty.sum().item() == pytest.approx(0.5, rel=1e-6)


@PROPERTY
@given(case=extreme_inputs())
def test_dice_finite_on_extremes(case):
    _, _, p, b = case
    loss, grad = value_and_grad(lambda x: dice_loss(x, b), p)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert loss.item() == pytest.approx(dice_reference(p.numpy(), b.numpy()), rel=1e-5, abs=1e-7)


def test_dice_under_bf16_autocast_is_float32():
    _, p, b = random_inputs(4, (2, 1, 6, 6, 6))
    got, widened = autocast_and_widened(dice_loss, p, box=b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # bf16 probabilities are widened, not summed in bf16: same as the float32 computation.
    assert got.item() == pytest.approx(widened.item(), rel=1e-6)


def test_dice_module_returns_loss_dict():
    b = box_mask((1, 1, 4, 4, 4), np.s_[..., :2, :2, :2])
    p = torch.full_like(b, 0.5)
    out = DiceLoss()(None, p, b)
    assert set(out) == {"loss"}
    assert out["loss"].item() == pytest.approx(dice_reference(p.numpy(), b.numpy()), rel=1e-6)


@pytest.mark.parametrize(
    ("probs_shape", "target_shape", "message"),
    [
        ((1, 1, 4, 4, 4), (1, 1, 4, 4, 5), r"probs shape \(1, 1, 4, 4, 4\) != target shape \(1, 1, 4, 4, 5\)"),
        ((1, 4, 4, 4), (1, 4, 4, 4), r"probs must be 5-D .* got shape \(1, 4, 4, 4\)"),
        ((1, 2, 4, 4, 4), (1, 2, 4, 4, 4), r"probs must have one channel .* got shape \(1, 2, 4, 4, 4\)"),
    ],
)
def test_dice_rejects_bad_shapes(probs_shape, target_shape, message):
    with pytest.raises(ValueError, match=message):
        dice_loss(torch.rand(probs_shape), torch.zeros(target_shape))


def test_dice_rejects_bad_dtypes_and_values():
    b = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"probs dtype torch.int64 is not floating point"):
        dice_loss(torch.zeros(1, 1, 2, 2, 2, dtype=torch.long), b)
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\].*max 3.0"):
        dice_loss(torch.full((1, 1, 2, 2, 2), 3.0), b)
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\].*NaN present: True"):
        dice_loss(torch.full((1, 1, 2, 2, 2), float("nan")), b)
    with pytest.raises(ValueError, match=r"target must be a \{0, 1\} mask, got value 0.5"):
        dice_loss(torch.rand(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 0.5))
    # bool and integer masks are fine
    assert dice_loss(torch.ones(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)).item() == 0.0
