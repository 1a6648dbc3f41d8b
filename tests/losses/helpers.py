"""What the loss tests share: float64 NumPy references of eqs. (1)-(7), random inputs, hypothesis strategies.

The references are written per sample, straight from the paper's equations, and independently of
wspet.losses: each test compares the torch loss against one of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

# Every property test: a modest number of examples, no deadline (the machine is shared and slow).
PROPERTY = settings(max_examples=50, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)
BATCHES = st.integers(1, 3)

# Small (B, 1, D, H, W) shapes with unequal sides and batch sizes 1 to 4.
SHAPES = [(1, 1, 4, 5, 6), (2, 1, 8, 8, 8), (3, 1, 6, 7, 5), (4, 1, 3, 9, 4)]

Seed = int | np.random.Generator


# -- float64 references --------------------------------------------------------------------------


def _as_float64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _modified_dice_sample(p: np.ndarray, b: np.ndarray, alpha: float) -> float:
    """Eqs. (3)-(4) for one (1, D, H, W) sample; mean(p) for an empty box."""
    if b.sum() == 0:
        return p.mean()
    overlap = (p * b).sum()
    m = b.sum() - overlap
    h = 1.0 if overlap / b.sum() > alpha else 0.0
    return 1 - 2 * overlap / (p.sum() + b.sum() - m * h)


def _mumford_shah_sample(i: np.ndarray, p: np.ndarray, b: np.ndarray, w1: float, w2: float, eps: float) -> float:
    """Eqs. (5)-(7) for one (1, D, H, W) sample with the textbook He; 0 for an empty box."""
    if b.sum() == 0:
        return 0.0
    he = 0.5 * (1 + 2 / np.pi * np.arctan((p - 0.5) / eps))
    c1 = (i * he * b).sum() / (he * b).sum()
    c2 = (i * (1 - he) * b).sum() / ((1 - he) * b).sum()
    t1 = ((np.abs(i * he - c1) - np.abs(i * he - c2)) * b).sum()
    t2 = ((np.abs(i * (1 - he) - c2) - np.abs(i * (1 - he) - c1)) * b).sum()
    return (w1 * t1 + w2 * t2) / b.sum()


def dice_reference(p: np.ndarray, b: np.ndarray) -> float:
    """Eq. (2) per sample in float64, mean(p) for an empty target, mean over the batch."""
    p, b = _as_float64(p, b)
    per_sample = [
        pi.mean() if bi.sum() == 0 else 1 - 2 * (pi * bi).sum() / (pi.sum() + bi.sum()) for pi, bi in zip(p, b)
    ]
    return float(np.mean(per_sample))


def modified_dice_reference(p: np.ndarray, b: np.ndarray, alpha: float) -> float:
    """Eqs. (3)-(4) per sample in float64, mean(p) for an empty box, mean over the batch."""
    p, b = _as_float64(p, b)
    return float(np.mean([_modified_dice_sample(pi, bi, alpha) for pi, bi in zip(p, b)]))


def mumford_shah_reference(i: np.ndarray, p: np.ndarray, b: np.ndarray, w1=1.0, w2=3.0, eps=0.03) -> float:
    """Eqs. (5)-(7) per sample in float64 with the textbook He; 0 for an empty box; mean over the batch."""
    i, p, b = _as_float64(i, p, b)
    return float(np.mean([_mumford_shah_sample(ii, pi, bi, w1, w2, eps) for ii, pi, bi in zip(i, p, b)]))


def composite_reference(i, p, b, beta=10.0, lam=1.0, alpha=0.1, w1=1.0, w2=3.0, eps=0.03) -> float:
    """Eq. (1) with eqs. (3)-(7), per sample in float64, mean over the batch.

    For an empty box the sample's term is beta mean(p): L_MDice -> mean(p), L_MS -> 0.
    """
    i, p, b = _as_float64(i, p, b)
    per_sample = [
        beta * _modified_dice_sample(pi, bi, alpha) + lam * _mumford_shah_sample(ii, pi, bi, w1, w2, eps)
        for ii, pi, bi in zip(i, p, b)
    ]
    return float(np.mean(per_sample))


# -- inputs --------------------------------------------------------------------------------------


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """(B, 1, D, H, W) {0, 1} float32 mask, one random non-empty box per sample."""
    mask = np.zeros(shape, dtype=np.float32)
    for sample in mask:
        lo = [rng.integers(0, n) for n in shape[2:]]
        hi = [rng.integers(a + 1, n + 1) for a, n in zip(lo, shape[2:])]
        sample[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return mask


def box_mask(shape: tuple[int, ...], index: object) -> torch.Tensor:
    """float32 zeros of ``shape`` with ones at ``index`` (e.g. ``np.s_[..., 1:3, 1:3, 1:3]``)."""
    mask = torch.zeros(shape)
    mask[index] = 1
    return mask


def random_arrays(seed: Seed, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> list[np.ndarray]:
    """(image, probs, box) NumPy arrays of ``shape``, drawn in that order from ``seed`` (or a generator).

    image: float64 N(1, 1); probs: float64 uniform in [low, high); box: ``random_boxes``.
    """
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) + 1.0, rng.uniform(low, high, shape), random_boxes(rng, shape)]


def as_tensors(*arrays: np.ndarray, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Each array as a contiguous tensor of ``dtype`` (float32 unless told), not sharing memory."""
    return [torch.tensor(np.ascontiguousarray(a), dtype=dtype) for a in arrays]


def random_inputs(
    seed: Seed, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """``random_arrays`` as (image, probs, box) tensors of ``dtype``."""
    return as_tensors(*random_arrays(seed, shape, low, high), dtype=dtype)


@st.composite
def extreme_inputs(draw: st.DrawFn) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fill, image, probs, box), float32 (B, 1, 3, 4, 5) with B in 1..3.

    probs all 0 (fill "zeros"), all 1 ("ones") or uniform ("random"); the box empty or one random box
    per sample; image N(1, 1).
    """
    fill = draw(st.sampled_from(["zeros", "ones", "random"]))
    image, probs, box = random_inputs(draw(SEEDS), (draw(BATCHES), 1, 3, 4, 5))
    if fill != "random":
        probs = torch.full_like(probs, 1.0 if fill == "ones" else 0.0)
    if draw(st.booleans()):
        box = torch.zeros_like(box)
    return fill, image, probs, box


def value_and_grad(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], probs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``loss_fn(probs)`` detached, its gradient with respect to a fresh leaf copy of ``probs``)."""
    leaf = probs.detach().clone().requires_grad_(True)
    loss = loss_fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def autocast_and_widened(
    loss_fn: Callable[..., torch.Tensor], *volumes: torch.Tensor, box: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss_fn(*volumes, box)`` with the volumes cast to ``dtype``, under CPU bf16 autocast, and again
    outside autocast with those same rounded volumes widened to float32: (autocast loss, widened loss)."""
    rounded = [v.to(dtype) for v in volumes]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(*rounded, box)
    return got, loss_fn(*(r.float() for r in rounded), box)


# -- boxes -----------------------------------------------------------------------------------------

CORNERS = st.tuples(*[st.integers(0, 3)] * 3)


def box_in_cube(corner: tuple[int, int, int], size: tuple[int, int, int], side: int = 8) -> tuple[torch.Tensor, tuple]:
    """``(box, region)``: a (1, 1, side, side, side) mask holding one box at ``corner`` of ``size``, and its slices."""
    box = torch.zeros(1, 1, side, side, side)
    region = tuple(slice(c, c + s) for c, s in zip(corner, size))
    box[(0, 0, *region)] = 1
    return box, region
