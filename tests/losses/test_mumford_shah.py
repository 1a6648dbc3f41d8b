"""wspet.losses.mumford_shah_loss / MumfordShahLoss against a float64 NumPy version of eqs. (5)-(7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.losses import MumfordShahLoss, mumford_shah_loss


def mumford_shah_reference(i: np.ndarray, p: np.ndarray, b: np.ndarray, w1=1.0, w2=3.0, eps=0.03) -> float:
    """Eqs. (5)-(7) per sample in float64 with the textbook He; 0 for an empty box; mean over the batch."""
    i, p, b = (x.astype(np.float64) for x in (i, p, b))
    per_sample = []
    for ii, pi, bi in zip(i, p, b):
        if bi.sum() == 0:
            per_sample.append(0.0)
            continue
        he = 0.5 * (1 + 2 / np.pi * np.arctan((pi - 0.5) / eps))
        c1 = (ii * he * bi).sum() / (he * bi).sum()
        c2 = (ii * (1 - he) * bi).sum() / ((1 - he) * bi).sum()
        t1 = ((np.abs(ii * he - c1) - np.abs(ii * he - c2)) * bi).sum()
        t2 = ((np.abs(ii * (1 - he) - c2) - np.abs(ii * (1 - he) - c1)) * bi).sum()
        per_sample.append((w1 * t1 + w2 * t2) / bi.sum())
    return float(np.mean(per_sample))


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """(B, 1, D, H, W) {0, 1} mask, one random non-empty box per sample."""
    mask = np.zeros(shape, dtype=np.float32)
    for sample in mask:
        lo = [rng.integers(0, n) for n in shape[2:]]
        hi = [rng.integers(a + 1, n + 1) for a, n in zip(lo, shape[2:])]
        sample[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return mask


def as_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]


SHAPES = [(1, 1, 4, 5, 6), (2, 1, 8, 8, 8), (3, 1, 6, 7, 5), (4, 1, 3, 9, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("w1", "w2", "eps"), [(1.0, 3.0, 0.03), (0.5, 2.0, 0.3)])
def test_mumford_shah_matches_numpy_reference(shape, w1, w2, eps):
    rng = np.random.default_rng(sum(shape))
    i = rng.standard_normal(shape) + 2.0
    p = rng.random(shape)
    b = random_boxes(rng, shape)
    got = mumford_shah_loss(*as_tensors(i, p, b), w1=w1, w2=w2, eps=eps)
    assert got.shape == () and got.dtype == torch.float32
    ref = mumford_shah_reference(*(t.numpy() for t in as_tensors(i, p, b)), w1=w1, w2=w2, eps=eps)
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
    b = np.zeros(shape)
    b[..., 60:90, 57:87, 40:70] = 1
    i, p, b = as_tensors(i, p, b)
    got = mumford_shah_loss(i, p, b).item()
    assert got == pytest.approx(mumford_shah_reference(i.numpy(), p.numpy(), b.numpy()), rel=1e-5)


def test_mumford_shah_gradcheck_float64_image_and_probs():
    rng = np.random.default_rng(2)
    shape = (2, 1, 3, 4, 3)
    i = torch.tensor(rng.standard_normal(shape) + 1.0, dtype=torch.float64, requires_grad=True)
    p = torch.tensor(rng.uniform(0.05, 0.95, shape), dtype=torch.float64, requires_grad=True)
    b = torch.from_numpy(random_boxes(rng, shape)).double()
    assert torch.autograd.gradcheck(lambda im, pr: mumford_shah_loss(im, pr, b, eps=0.3), (i, p))


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


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3))
def test_voxels_outside_box_do_not_matter(seed, batch):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 4, 5, 3)
    i, p, b = rng.standard_normal(shape), rng.random(shape), random_boxes(rng, shape)
    outside = b == 0
    i2, p2 = i.copy(), p.copy()
    i2[outside] = rng.standard_normal(outside.sum()) * 10
    p2[outside] = rng.random(outside.sum())
    before = mumford_shah_loss(*as_tensors(i, p, b)).item()
    after = mumford_shah_loss(*as_tensors(i2, p2, b)).item()
    assert after == pytest.approx(before, rel=1e-6, abs=1e-7)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 2), factor=st.integers(2, 3))
def test_same_value_after_nearest_neighbour_upsampling(seed, batch, factor):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 3, 4, 3)
    arrays = [rng.standard_normal(shape) + 1, rng.random(shape), random_boxes(rng, shape)]
    up = [a.repeat(factor, 2).repeat(factor, 3).repeat(factor, 4) for a in arrays]
    small = mumford_shah_loss(*as_tensors(*arrays)).item()
    large = mumford_shah_loss(*as_tensors(*up)).item()
    assert large == pytest.approx(small, rel=1e-5, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 3),
    fill=st.sampled_from(["zeros", "ones", "random"]),
    empty=st.booleans(),
)
def test_mumford_shah_finite_on_extremes(seed, batch, fill, empty):
    rng = np.random.default_rng(seed)
    shape = (batch, 1, 3, 4, 5)
    p = {"zeros": np.zeros(shape), "ones": np.ones(shape), "random": rng.random(shape)}[fill]
    i = rng.standard_normal(shape)
    b = np.zeros(shape) if empty else random_boxes(rng, shape)
    i_t, p_t, b_t = as_tensors(i, p, b)
    p_t.requires_grad_(True)
    loss = mumford_shah_loss(i_t, p_t, b_t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p_t.grad).all()
    ref = mumford_shah_reference(i_t.numpy(), p_t.detach().numpy(), b)
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_empty_box_gives_zero_and_no_gradient():
    rng = np.random.default_rng(6)
    shape = (1, 1, 4, 4, 4)
    i, p, b = as_tensors(rng.standard_normal(shape), rng.random(shape), np.zeros(shape))
    p.requires_grad_(True)
    loss = mumford_shah_loss(i, p, b)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(p.grad) == 0


def test_tiny_eps_stays_finite():
    # atan2 form of He keeps 1 - He > 0 where 0.5 (1 + 2/pi atan(x/eps)) would round to exactly 1.
    rng = np.random.default_rng(7)
    shape = (1, 1, 4, 4, 4)
    i, p, b = as_tensors(rng.standard_normal(shape), np.ones(shape), np.ones(shape))
    p.requires_grad_(True)
    loss = mumford_shah_loss(i, p, b, eps=1e-12)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_mumford_shah_under_bf16_autocast_is_float32():
    rng = np.random.default_rng(4)
    shape = (2, 1, 6, 6, 6)
    i, p, b = as_tensors(rng.standard_normal(shape), rng.random(shape), random_boxes(rng, shape))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mumford_shah_loss(i.bfloat16(), p.bfloat16(), b)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    widened = mumford_shah_loss(i.bfloat16().float(), p.bfloat16().float(), b)
    assert got.item() == pytest.approx(widened.item(), rel=1e-6)


def test_module_matches_function():
    rng = np.random.default_rng(8)
    shape = (2, 1, 4, 4, 4)
    i, p, b = as_tensors(rng.standard_normal(shape), rng.random(shape), random_boxes(rng, shape))
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
