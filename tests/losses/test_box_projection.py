"""wspet.losses.box_projection_loss / BoxProjectionLoss (BoxInst in 3D) against a float64 loop reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import CORNERS, PROPERTY, SEEDS, SHAPES, box_in_cube, random_inputs
from wspet.losses import BoxProjectionLoss, box_projection_loss


def projection_reference(p: np.ndarray, b: np.ndarray) -> float:
    """Sum over axes of 1 - 2 sum(P B) / (sum P^2 + sum B^2) of the projections onto each axis, per sample, batch mean."""
    losses = []
    for ps, bs in zip(p.astype(np.float64), b.astype(np.float64)):
        total = 0.0
        for axis in (1, 2, 3):
            others = tuple(a for a in (1, 2, 3) if a != axis)
            pp, bb = ps.max(axis=others), bs.max(axis=others)
            total += 1 - 2 * (pp * bb).sum() / ((pp**2).sum() + (bb**2).sum()) if bb.sum() > 0 else (pp**2).mean()
        losses.append(total)
    return float(np.mean(losses))


def pairwise_reference(image: np.ndarray, p: np.ndarray, b: np.ndarray, theta: float, tau: float) -> float:
    """Every face-neighbour pair visited one by one."""
    losses = []
    for img, ps, bs in zip(image[:, 0].astype(np.float64), p[:, 0].astype(np.float64), b[:, 0]):
        total, count = 0.0, 0
        for i, j, k in itertools.product(*map(range, ps.shape)):
            for di, dj, dk in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
                n = (i + di, j + dj, k + dk)
                if any(a >= s for a, s in zip(n, ps.shape)):
                    continue
                if np.exp(-abs(img[i, j, k] - img[n]) / theta) < tau or not (bs[i, j, k] or bs[n]):
                    continue
                same = ps[i, j, k] * ps[n] + (1 - ps[i, j, k]) * (1 - ps[n])
                total, count = total - np.log(max(same, 1e-6)), count + 1
        losses.append(total / count if count else 0.0)
    return float(np.mean(losses))


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_loop_reference(shape):
    image, p, b = random_inputs(sum(shape), shape)
    terms = BoxProjectionLoss(pairwise_weight=0.7, theta=0.4, tau=0.3)(image, p, b)
    projection = projection_reference(p.numpy(), b.numpy())
    pairwise = pairwise_reference(image.numpy(), p.numpy(), b.numpy(), 0.4, 0.3)
    assert terms["projection"].item() == pytest.approx(projection, rel=1e-5)
    assert terms["pairwise"].item() == pytest.approx(pairwise, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(projection + 0.7 * pairwise, rel=1e-5)
    assert box_projection_loss(image, p, b, 0.7, 0.4, 0.3).item() == pytest.approx(terms["loss"].item(), rel=1e-6)


@given(seed=SEEDS, corner=CORNERS, size=st.tuples(*[st.integers(1, 4)] * 3))
@PROPERTY
def test_a_lesion_touching_every_face_of_its_box_has_no_projection_loss(seed, corner, size):
    """Any connected shape that spans the box along each axis (here a cross through it) projects onto the box."""
    box, region = box_in_cube(corner, size)
    lesion = torch.zeros_like(box)
    centre = [c + s // 2 for c, s in zip(corner, size)]
    for axis in range(3):
        line = [slice(c, c + 1) for c in centre]
        line[axis] = region[axis]
        lesion[(0, 0, *line)] = 1
    image = torch.from_numpy(np.random.default_rng(seed).normal(size=box.shape).astype(np.float32))
    terms = BoxProjectionLoss()(image, lesion, box)
    assert terms["projection"].item() == pytest.approx(0.0, abs=1e-6)
    shrunk = lesion.clone()
    shrunk[(0, 0, *region)] = 0  # nothing predicted in the box: every projection misses it
    assert BoxProjectionLoss()(image, shrunk, box)["projection"].item() == pytest.approx(3.0)


def test_pairwise_term_places_the_edge_where_the_uptake_changes():
    """A hot cube inside a box on a flat background: its mask costs less than a mask cut elsewhere."""
    image = torch.zeros(1, 1, 10, 10, 10)
    image[..., 3:7, 3:7, 3:7] = 4.0
    box = torch.zeros_like(image)
    box[..., 2:8, 2:8, 2:8] = 1
    right = (image > 0).float().clamp(0.02, 0.98)
    wrong = torch.zeros_like(image)
    wrong[..., 2:8, 2:8, 2:5] = 1  # half the box: cuts through both the hot cube and the background
    wrong = wrong.clamp(0.02, 0.98)
    loss = BoxProjectionLoss(pairwise_weight=1.0, theta=0.5, tau=0.3)
    assert loss(image, right, box)["pairwise"] < loss(image, wrong, box)["pairwise"]
    # Edges across the cube's surface (affinity exp(-8) < tau) do not count, so the right mask's
    # only cost is its own uncertainty, -log(0.98^2 + 0.02^2).
    assert loss(image, right, box)["pairwise"].item() == pytest.approx(-np.log(0.98**2 + 0.02**2), rel=1e-5)


def test_gradients_are_finite_for_certain_predictions():
    image, _, box = random_inputs(3, (2, 1, 6, 6, 6))
    probs = (torch.rand(2, 1, 6, 6, 6) > 0.5).float().requires_grad_(True)
    box_projection_loss(image, probs, box).backward()
    assert torch.isfinite(probs.grad).all() and probs.grad.abs().sum() > 0


@pytest.mark.parametrize("name,value", [("pairwise_weight", -1.0), ("theta", 0.0), ("tau", 1.5)])
def test_bad_hyperparameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        BoxProjectionLoss(**{name: value})
