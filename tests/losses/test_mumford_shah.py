"""wspet.losses.mumford_shah_loss / MumfordShahLoss against a float64 NumPy version of eqs. (5)-(7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import BATCHES, PROPERTY, SEEDS, SHAPES, box_mask, extreme_inputs, mumford_shah_reference
from tests.losses.helpers import as_tensors, autocast_and_widened, random_arrays, random_inputs, value_and_grad
from wspet.losses import MumfordShahLoss, mumford_shah_loss


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("w1", "w2", "eps"), [(1.0, 3.0, 0.03), (0.5, 2.0, 0.3)])
def test_mumford_shah_matches_numpy_reference(shape, w1, w2, eps):
    i, p, b = random_inputs(sum(shape), shape)
    got = mumford_shah_loss(i, p, b, w1=w1, w2=w2, eps=eps)
    assert got.shape == () and got.dtype == torch.float32
    ref = mumford_shah_reference(i.numpy(), p.numpy(), b.numpy(), w1=w1, w2=w2, eps=eps)
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_mumford_shah_matches_reference_at_paper_volume_size():
    # A bright blob in a z-normalised 160 x 160 x 128 volume, prediction a soft ball: realistic sums.
    rng = np.random.default_rng(1)
    shape = (1, 1, 160, 160, 128)
    z, y, x = np.ogrid[:160, :160, :128]
    r2 = (z - 75) ** 2 + (y - 72) ** 2 + (x - 55) ** 2
    i = (1 + 7 * np.exp(-r2 / 60.0) + 0.2 * rng.standard_normal(shape[2:]))[None, None]
    i = (i - i.mean()) / i.std()
    p = (1 / (1 + np.exp((np.sqrt(r2) - 9) / 1.5)))[None, None] * np.ones(shape)
    b = box_mask(shape, np.s_[..., 60:90, 57:87, 40:70])
    i, p, b = as_tensors(i, p, b)
    got = mumford_shah_loss(i, p, b).item()
    assert got == pytest.approx(mumford_shah_reference(i.numpy(), p.numpy(), b.numpy()), rel=1e-5)


def test_mumford_shah_gradcheck_float64_image_and_probs():
    i, p, b = random_inputs(2, (2, 1, 3, 4, 3), 0.05, 0.95, torch.float64)
    inputs = (i.requires_grad_(True), p.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda im, pr: mumford_shah_loss(im, pr, b, eps=0.3), inputs)


def test_gradient_flows_through_c1_and_c2():
    # Moving one box voxel's intensity changes C1 and C2, hence every box voxel's term.
    rng = np.random.default_rng(5)
    shape = (1, 1, 3, 3, 3)
    i = torch.tensor(rng.standard_normal(shape), dtype=torch.float64, requires_grad=True)
    p = torch.tensor(rng.random(shape), dtype=torch.float64)
    b = torch.ones(shape, dtype=torch.float64)
    mumford_shah_loss(i, p, b).backward()
    # Reference gradient by central differences of the NumPy equations (C1, C2 recomputed).
    h, k = 1e-6, (0, 0, 1, 1, 1)
    i_np = i.detach().numpy()
    plus, minus = i_np.copy(), i_np.copy()
    plus[k] += h
    minus[k] -= h
    numeric = (
        mumford_shah_reference(plus, p.numpy(), b.numpy()) - mumford_shah_reference(minus, p.numpy(), b.numpy())
    ) / (2 * h)
    assert i.grad[k].item() == pytest.approx(numeric, rel=1e-5)


@PROPERTY
@given(seed=SEEDS, batch=BATCHES)
def test_voxels_outside_box_do_not_matter(seed, batch):
    rng = np.random.default_rng(seed)
    i, p, b = random_arrays(rng, (batch, 1, 4, 5, 3))
    outside = b == 0
    i2, p2 = i.copy(), p.copy()
    i2[outside] = rng.standard_normal(outside.sum()) * 10
    p2[outside] = rng.random(outside.sum())
    before = mumford_shah_loss(*as_tensors(i, p, b)).item()
    after = mumford_shah_loss(*as_tensors(i2, p2, b)).item()
    assert after == pytest.approx(before, rel=1e-6, abs=1e-7)


@PROPERTY
@given(seed=SEEDS, batch=st.integers(1, 2), factor=st.integers(2, 3))
def test_same_value_after_nearest_neighbour_upsampling(seed, batch, factor):
    arrays = random_arrays(seed, (batch, 1, 3, 4, 3))
    up = [a.repeat(factor, 2).repeat(factor, 3).repeat(factor, 4) for a in arrays]
    small = mumford_shah_loss(*as_tensors(*arrays, dtype=torch.float64)).item()  # exact in float64: the terms cancel
    large = mumford_shah_loss(*as_tensors(*up, dtype=torch.float64)).item()
    assert large == pytest.approx(small, rel=1e-5, abs=1e-6)


@PROPERTY
@given(case=extreme_inputs())
def test_mumford_shah_finite_on_extremes(case):
    _, i, p, b = case
    loss, grad = value_and_grad(lambda x: mumford_shah_loss(i, x, b), p)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref = mumford_shah_reference(i.numpy(), p.numpy(), b.numpy())
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_empty_box_gives_zero_and_no_gradient():
    i, p, b = random_inputs(6, (1, 1, 4, 4, 4))
    loss, grad = value_and_grad(lambda x: mumford_shah_loss(i, x, torch.zeros_like(b)), p)
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_tiny_eps_stays_finite():
    # atan2 form of He keeps 1 - He > 0 where 0.5 (1 + 2/pi atan(x/eps)) would round to exactly 1.
    i, _, _ = random_inputs(7, (1, 1, 4, 4, 4))
    ones = torch.ones_like(i)
    loss, grad = value_and_grad(lambda x: mumford_shah_loss(i, x, ones, eps=1e-12), ones)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_mumford_shah_under_bf16_autocast_is_float32():
    i, p, b = random_inputs(4, (2, 1, 6, 6, 6))
    got, widened = autocast_and_widened(mumford_shah_loss, i, p, box=b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(widened.item(), rel=1e-6)


def test_module_matches_function():
    i, p, b = random_inputs(8, (2, 1, 4, 4, 4))
    out = MumfordShahLoss(w1=2.0, w2=1.0, eps=0.1)(i, p, b)
    assert set(out) == {"loss"}
    ref = mumford_shah_reference(i.numpy(), p.numpy(), b.numpy(), 2.0, 1.0, 0.1)
    assert out["loss"].item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"w1": -1.0}, r"w1 must lie in \[0.0, inf\), got -1.0"),
        ({"w2": -0.5}, "w2 must"),
        ({"eps": 0.0}, r"eps must lie in \(0.0, inf\), got 0.0"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MumfordShahLoss(**kwargs)
    with pytest.raises(ValueError, match=message):
        mumford_shah_loss(torch.zeros(1, 1, 2, 2, 2), torch.rand(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2), **kwargs)


def test_rejects_image_shape_mismatch_and_non_finite_image():
    p, b = torch.rand(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"probs shape \(1, 1, 4, 4, 4\) != image shape \(1, 1, 4, 4, 3\)"):
        mumford_shah_loss(torch.zeros(1, 1, 4, 4, 3), p, b)
    with pytest.raises(ValueError, match="image must be finite"):
        mumford_shah_loss(torch.full((1, 1, 4, 4, 4), float("inf")), p, b)
