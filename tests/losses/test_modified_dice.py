"""wspet.losses.modified_dice_loss / ModifiedDiceLoss against a float64 NumPy version of eqs. (3)-(4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import BATCHES, PROPERTY, SEEDS, SHAPES, box_mask, extreme_inputs, modified_dice_reference
from tests.losses.helpers import as_tensors, autocast_and_widened, random_arrays, random_inputs, value_and_grad
from wspet.losses import ModifiedDiceLoss, dice_loss, modified_dice_loss


def in_box_fraction(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (p * b).reshape(len(p), -1).sum(1) / b.reshape(len(b), -1).sum(1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.1])  # in-box fraction ~0.5 (H = 1) or ~0.05 (H = 0)
def test_modified_dice_matches_numpy_reference(shape, scale):
    _, p, b = random_inputs(sum(shape), shape, high=scale)
    got = modified_dice_loss(p, b, alpha=0.1)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(modified_dice_reference(p.numpy(), b.numpy(), 0.1), rel=1e-5)


def test_modified_dice_matches_reference_at_paper_volume_size():
    # A soft ball almost entirely inside the box: the loss is small (~4e-3), the hard case for precision.
    shape = (1, 1, 160, 160, 128)
    z, y, x = np.ogrid[:160, :160, :128]
    r = np.sqrt((z - 75) ** 2 + (y - 72) ** 2 + (x - 55) ** 2)
    p = np.broadcast_to(1 / (1 + np.exp((r - 9) / 1.5)), shape).astype(np.float32)
    b = box_mask(shape, np.s_[..., 60:90, 57:87, 40:70]).numpy()
    ref = modified_dice_reference(p, b, 0.1)
    assert 1e-3 < ref < 1e-2
    got = modified_dice_loss(torch.from_numpy(p), torch.from_numpy(b)).item()
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_modified_dice_gradcheck_float64(scale):
    # Inputs sit well away from the switch (fraction ~0.5 or ~0.05 vs alpha 0.1), so H is fixed.
    rng = np.random.default_rng(2)
    shape = (2, 1, 3, 4, 3)
    p = torch.tensor(rng.uniform(0.2, 0.8, shape) * scale, dtype=torch.float64, requires_grad=True)
    b = box_mask(shape, np.s_[:, :, 1:3, 1:3, :]).double()
    frac = in_box_fraction(p.detach().numpy(), b.numpy())
    assert np.all(np.abs(frac - 0.1) > 0.02)
    assert torch.autograd.gradcheck(lambda x: modified_dice_loss(x, b, alpha=0.1), (p,))


def test_step_passes_no_gradient_but_m_does():
    # For H = 1 the denominator is sum p + sum(p b); its gradient must include M's (= -grad sum(p b)).
    p = torch.tensor([0.9, 0.6, 0.2, 0.3], dtype=torch.float64).reshape(1, 1, 1, 1, 4).requires_grad_(True)
    b = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 1, 1, 1, 4)
    modified_dice_loss(p, b, alpha=0.1).backward()
    overlap, p_sum = 1.5, 2.0
    d = p_sum + overlap
    inside = -(2 * d - 2 * overlap * 2) / d**2  # d/dp_i of -2 I / (P + I) for a box voxel
    outside = 2 * overlap / d**2
    assert p.grad.flatten().tolist() == pytest.approx([inside, inside, outside, outside], rel=1e-12)


@PROPERTY
@given(seed=SEEDS, batch=BATCHES, alpha=st.floats(0.0, 0.9))
def test_equals_dice_while_fraction_at_most_alpha(seed, batch, alpha):
    _, p, b = random_arrays(seed, (batch, 1, 4, 5, 3))
    frac = in_box_fraction(p, b)
    p = p * np.minimum(1.0, alpha / np.maximum(frac, 1e-12))[:, None, None, None, None]  # now fraction <= alpha
    p_t, b_t = as_tensors(p, b)
    assert np.all(in_box_fraction(p_t.double().numpy(), b) <= alpha + 1e-6)
    got = modified_dice_loss(p_t, b_t, alpha=alpha).item()
    # A float32 fraction rounding just above alpha would flip H; skip only that measure-zero case.
    if np.any(np.abs(in_box_fraction(p_t.numpy(), b) - alpha) < 1e-5):
        return
    assert got == pytest.approx(dice_loss(p_t, b_t).item(), rel=1e-6, abs=1e-7)


@PROPERTY
@given(seed=SEEDS, batch=BATCHES, shrink=st.floats(0.0, 0.95))
def test_zero_when_prediction_inside_box_and_covers_more_than_alpha(seed, batch, shrink):
    _, p, b = random_arrays(seed, (batch, 1, 4, 5, 3), low=0.01)
    p = (p * b).astype(np.float32)
    alpha = float(in_box_fraction(p, b).min() * shrink)  # every sample's fraction exceeds alpha
    got = modified_dice_loss(torch.from_numpy(p), torch.from_numpy(b), alpha=alpha).item()
    assert got == pytest.approx(0.0, abs=1e-6)


@PROPERTY
@given(case=extreme_inputs(), alpha=st.floats(0.0, 0.99))
def test_modified_dice_finite_on_extremes(case, alpha):
    fill, _, p, b = case
    loss, grad = value_and_grad(lambda x: modified_dice_loss(x, b, alpha=alpha), p)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if fill != "random":  # a random fraction may sit within float32 rounding of alpha
        assert loss.item() == pytest.approx(modified_dice_reference(p.numpy(), b.numpy(), alpha), rel=1e-5, abs=1e-7)


def test_empty_box_gives_mean_prob_and_gradient_toward_background():
    p = torch.full((1, 1, 4, 4, 4), 0.3, requires_grad=True)
    loss = modified_dice_loss(p, torch.zeros(1, 1, 4, 4, 4))
    assert loss.item() == pytest.approx(0.3, rel=1e-6)
    loss.backward()
    assert torch.allclose(p.grad, torch.full_like(p, 1 / 64))


def test_modified_dice_under_bf16_autocast_is_float32():
    _, p, b = random_inputs(4, (2, 1, 6, 6, 6))
    got, widened = autocast_and_widened(modified_dice_loss, p, box=b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(widened.item(), rel=1e-6)


def test_module_reports_box_fraction():
    b = box_mask((2, 1, 2, 2, 2), np.s_[0, :, :, :, :1])  # 4 box voxels in sample 0; sample 1 empty
    p = torch.full_like(b, 0.25)
    out = ModifiedDiceLoss(alpha=0.1)(None, p, b)
    assert set(out) == {"loss", "box_fraction"}
    assert out["box_fraction"].item() == pytest.approx(0.5 * 0.25)  # empty box counts as 0
    assert out["loss"].item() == pytest.approx(modified_dice_reference(p.numpy(), b.numpy(), 0.1), rel=1e-6)


@pytest.mark.parametrize("alpha", [-0.1, 1.0, float("nan"), True])
def test_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha must"):
        ModifiedDiceLoss(alpha=alpha)
    with pytest.raises(ValueError, match=r"alpha must"):
        modified_dice_loss(torch.rand(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2), alpha=alpha)


def test_rejects_shape_mismatch_naming_both_shapes():
    with pytest.raises(ValueError, match=r"probs shape \(2, 1, 4, 4, 4\) != box shape \(1, 1, 4, 4, 4\)"):
        modified_dice_loss(torch.rand(2, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4))
