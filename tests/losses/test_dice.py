"""wspet.losses.dice_loss / DiceLoss against a float64 NumPy version of eq. (2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.losses import DiceLoss, dice_loss


def dice_reference(p: np.ndarray, b: np.ndarray) -> float:
    """Eq. (2) per sample in float64, mean(p) for an empty target, mean over the batch."""
    p, b = p.astype(np.float64), b.astype(np.float64)
    per_sample = [
        pi.mean() if bi.sum() == 0 else 1 - 2 * (pi * bi).sum() / (pi.sum() + bi.sum()) for pi, bi in zip(p, b)
    ]
    return float(np.mean(per_sample))


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """(B, 1, D, H, W) {0, 1} mask, one random non-empty box per sample."""
    mask = np.zeros(shape, dtype=np.float32)
    for sample in mask:
        lo = [rng.integers(0, n) for n in shape[2:]]
        hi = [rng.integers(a + 1, n + 1) for a, n in zip(lo, shape[2:])]
        sample[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return mask


SHAPES = [(1, 1, 4, 5, 6), (2, 1, 8, 8, 8), (3, 1, 6, 7, 5), (4, 1, 3, 9, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_matches_numpy_reference(shape):
    rng = np.random.default_rng(sum(shape))
    p = rng.random(shape).astype(np.float32)
    b = random_boxes(rng, shape)
    got = dice_loss(torch.from_numpy(p), torch.from_numpy(b))
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(dice_reference(p, b), rel=1e-5)


def test_dice_matches_reference_at_paper_volume_size():
    # 160 x 160 x 128 is the paper's network input; float32 sums must stay within 1e-5 relative.
    rng = np.random.default_rng(1)
    shape = (1, 1, 160, 160, 128)
    p = rng.random(shape, dtype=np.float32) * 0.2
    b = np.zeros(shape, dtype=np.float32)
    b[..., 60:90, 50:95, 40:70] = 1
    got = dice_loss(torch.from_numpy(p), torch.from_numpy(b)).item()
    assert got == pytest.approx(dice_reference(p, b), rel=1e-5)


def test_dice_perfect_and_disjoint_predictions():
    b = torch.zeros(1, 1, 4, 4, 4)
    b[..., 1:3, 1:3, 1:3] = 1
    assert dice_loss(b.clone(), b).item() == pytest.approx(0.0, abs=1e-7)
    assert dice_loss(1 - b, b).item() == pytest.approx(1.0, abs=1e-7)


def test_dice_gradcheck_float64():
    rng = np.random.default_rng(2)
    shape = (2, 1, 3, 4, 3)
    p = torch.tensor(rng.uniform(0.05, 0.95, shape), dtype=torch.float64, requires_grad=True)
    b = torch.from_numpy(random_boxes(rng, shape)).double()
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, b), (p,))


def test_empty_target_gives_mean_prob_and_gradient_toward_background():
    rng = np.random.default_rng(3)
    shape = (2, 1, 4, 4, 4)
    p = torch.tensor(rng.uniform(0.1, 0.9, shape), dtype=torch.float32, requires_grad=True)
    b = torch.zeros(shape)
    b[0, :, 1:3, 1:3, 1:3] = 1  # sample 1 has no lesion
    loss = dice_loss(p, b)
    expected = 0.5 * (dice_reference(p.detach().numpy()[:1], b.numpy()[:1]) + p.detach()[1].mean().item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad_empty = p.grad[1]
    # d mean(p) / dp_i = 1 / N per voxel, halved by the batch mean: a plain, unscaled push toward 0.
    assert torch.allclose(grad_empty, torch.full_like(grad_empty, 0.5 / 64))
    assert grad_empty.sum().item() == pytest.approx(0.5, rel=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    fill=st.sampled_from(["zeros", "ones", "random"]),
    empty=st.booleans(),
)
def test_dice_finite_on_extremes(seed, batch, fill, empty):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 3, 4, 5)
    p = {"zeros": np.zeros(shape), "ones": np.ones(shape), "random": rng.random(shape)}[fill].astype(np.float32)
    b = np.zeros(shape, np.float32) if empty else random_boxes(rng, shape)
    p_t = torch.from_numpy(p).requires_grad_(True)
    loss = dice_loss(p_t, torch.from_numpy(b))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p_t.grad).all()
    assert loss.item() == pytest.approx(dice_reference(p, b), rel=1e-5, abs=1e-7)


def test_dice_under_bf16_autocast_is_float32():
    rng = np.random.default_rng(4)
    shape = (2, 1, 6, 6, 6)
    p = torch.from_numpy(rng.random(shape).astype(np.float32)).bfloat16()
    b = torch.from_numpy(random_boxes(rng, shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dice_loss(p, b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # bf16 probabilities are widened, not summed in bf16: same as the float32 computation.
    assert got.item() == pytest.approx(dice_loss(p.float(), b).item(), rel=1e-6)


def test_dice_module_returns_loss_dict():
    b = torch.zeros(1, 1, 4, 4, 4)
    b[..., :2, :2, :2] = 1
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
