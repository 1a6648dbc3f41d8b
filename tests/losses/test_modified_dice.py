"""wspet.losses.modified_dice_loss / ModifiedDiceLoss against a float64 NumPy version of eqs. (3)-(4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.losses import ModifiedDiceLoss, dice_loss, modified_dice_loss


def modified_dice_reference(p: np.ndarray, b: np.ndarray, alpha: float) -> float:
    """Eqs. (3)-(4) per sample in float64, mean(p) for an empty box, mean over the batch."""
    p, b = p.astype(np.float64), b.astype(np.float64)
    per_sample = []
    for pi, bi in zip(p, b):
        if bi.sum() == 0:
            per_sample.append(pi.mean())
            continue
        overlap = (pi * bi).sum()
        m = bi.sum() - overlap
        h = 1.0 if overlap / bi.sum() > alpha else 0.0
        per_sample.append(1 - 2 * overlap / (pi.sum() + bi.sum() - m * h))
    return float(np.mean(per_sample))


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """(B, 1, D, H, W) {0, 1} mask, one random non-empty box per sample."""
    mask = np.zeros(shape, dtype=np.float32)
    for sample in mask:
        lo = [rng.integers(0, n) for n in shape[2:]]
        hi = [rng.integers(a + 1, n + 1) for a, n in zip(lo, shape[2:])]
        sample[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return mask


def in_box_fraction(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (p * b).reshape(len(p), -1).sum(1) / b.reshape(len(b), -1).sum(1)


SHAPES = [(1, 1, 4, 5, 6), (2, 1, 8, 8, 8), (3, 1, 6, 7, 5), (4, 1, 3, 9, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 0.1])  # in-box fraction ~0.5 (H = 1) or ~0.05 (H = 0)
def test_modified_dice_matches_numpy_reference(shape, scale):
    rng = np.random.default_rng(sum(shape))
    p = (rng.random(shape) * scale).astype(np.float32)
    b = random_boxes(rng, shape)
    got = modified_dice_loss(torch.from_numpy(p), torch.from_numpy(b), alpha=0.1)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(modified_dice_reference(p, b, 0.1), rel=1e-5)


def test_modified_dice_matches_reference_at_paper_volume_size():
    # A soft ball almost entirely inside the box: the loss is small (~4e-3), the hard case for precision.
    shape = (1, 1, 160, 160, 128)
    z, y, x = np.ogrid[:160, :160, :128]
    r = np.sqrt((z - 75) ** 2 + (y - 72) ** 2 + (x - 55) ** 2)
    p = np.broadcast_to(1 / (1 + np.exp((r - 9) / 1.5)), shape).astype(np.float32)
    b = np.zeros(shape, dtype=np.float32)
    b[..., 60:90, 57:87, 40:70] = 1
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
    b = torch.zeros(shape, dtype=torch.float64)
    b[:, :, 1:3, 1:3, :] = 1
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


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), alpha=st.floats(0.0, 0.9))
def test_equals_dice_while_fraction_at_most_alpha(seed, batch, alpha):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 4, 5, 3)
    b = random_boxes(rng, shape)
    p = rng.random(shape)
    frac = in_box_fraction(p, b)
    p = p * np.minimum(1.0, alpha / np.maximum(frac, 1e-12))[:, None, None, None, None]  # now fraction <= alpha
    p_t, b_t = torch.from_numpy(p.astype(np.float32)), torch.from_numpy(b)
    assert np.all(in_box_fraction(p_t.double().numpy(), b) <= alpha + 1e-6)
    got = modified_dice_loss(p_t, b_t, alpha=alpha).item()
    # A float32 fraction rounding just above alpha would flip H; skip only that measure-zero case.
    if np.any(np.abs(in_box_fraction(p_t.numpy(), b) - alpha) < 1e-5):
        return
    assert got == pytest.approx(dice_loss(p_t, b_t).item(), rel=1e-6, abs=1e-7)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3), shrink=st.floats(0.0, 0.95))
def test_zero_when_prediction_inside_box_and_covers_more_than_alpha(seed, batch, shrink):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 4, 5, 3)
    b = random_boxes(rng, shape)
    p = (rng.uniform(0.01, 1.0, shape) * b).astype(np.float32)
    alpha = float(in_box_fraction(p, b).min() * shrink)  # every sample's fraction exceeds alpha
    got = modified_dice_loss(torch.from_numpy(p), torch.from_numpy(b), alpha=alpha).item()
    assert got == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    fill=st.sampled_from(["zeros", "ones", "random"]),
    empty=st.booleans(),
    alpha=st.floats(0.0, 0.99),
)
def test_modified_dice_finite_on_extremes(seed, batch, fill, empty, alpha):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 3, 4, 5)
    p = {"zeros": np.zeros(shape), "ones": np.ones(shape), "random": rng.random(shape)}[fill].astype(np.float32)
    b = np.zeros(shape, np.float32) if empty else random_boxes(rng, shape)
    p_t = torch.from_numpy(p).requires_grad_(True)
    loss = modified_dice_loss(p_t, torch.from_numpy(b), alpha=alpha)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p_t.grad).all()
    if fill != "random":  # a random fraction may sit within float32 rounding of alpha
        assert loss.item() == pytest.approx(modified_dice_reference(p, b, alpha), rel=1e-5, abs=1e-7)


def test_empty_box_gives_mean_prob_and_gradient_toward_background():
    p = torch.full((1, 1, 4, 4, 4), 0.3, requires_grad=True)
    loss = modified_dice_loss(p, torch.zeros(1, 1, 4, 4, 4))
    assert loss.item() == pytest.approx(0.3, rel=1e-6)
    loss.backward()
    assert torch.allclose(p.grad, torch.full_like(p, 1 / 64))


def test_modified_dice_under_bf16_autocast_is_float32():
    rng = np.random.default_rng(4)
    shape = (2, 1, 6, 6, 6)
    p = torch.from_numpy(rng.random(shape).astype(np.float32)).bfloat16()
    b = torch.from_numpy(random_boxes(rng, shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = modified_dice_loss(p, b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(modified_dice_loss(p.float(), b).item(), rel=1e-6)


def test_module_reports_box_fraction():
    b = torch.zeros(2, 1, 2, 2, 2)
    b[0, :, :, :, :1] = 1  # 4 box voxels in sample 0; sample 1 empty
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
