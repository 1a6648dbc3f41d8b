"""wspet.losses.tightness_loss / TightnessLoss (Kervadec et al. 2020) against a float64 loop reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.losses.helpers import CORNERS, PROPERTY, SEEDS, SHAPES, box_in_cube, random_inputs
from wspet.losses import TightnessLoss, log_barrier, tightness_loss


def barrier_reference(z: float, t: float) -> float:
    if z <= -1 / t**2:
        return -math.log(-z) / t
    return t * z - math.log(1 / t**2) / t + 1 / t


def loss_reference(p: np.ndarray, b: np.ndarray, weight: float, t: float) -> float:
    """Every line and every outside voxel visited one by one."""
    losses = []
    for ps, bs in zip(p[:, 0].astype(np.float64), b[:, 0].astype(np.float64)):
        barriers = []
        for axis in range(3):
            others = [range(n) for a, n in enumerate(ps.shape) if a != axis]
            for position in itertools.product(*others):
                index = list(position)
                index.insert(axis, slice(None))
                line_p, line_b = ps[tuple(index)], bs[tuple(index)]
                if line_b.any():
                    barriers.append(barrier_reference(1 - float((line_p * line_b).sum()), t))
        tight = float(np.mean(barriers)) if barriers else 0.0
        outside = ps[bs == 0]
        empty = float(np.mean([barrier_reference(v, t) for v in outside])) if outside.size else 0.0
        losses.append(tight + weight * empty)
    return float(np.mean(losses))


@given(z=st.floats(-10.0, 10.0), t=st.floats(0.5, 20.0))
@PROPERTY
def test_log_barrier_matches_its_definition(z, t):
    got = log_barrier(torch.tensor(z, dtype=torch.float64), t).item()
    assert got == pytest.approx(barrier_reference(z, t), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("t", [1.0, 5.0, 30.0])
def test_log_barrier_is_continuous_and_increasing_at_the_switch(t):
    switch = -1 / t**2
    z = torch.tensor([switch - 1e-9, switch, switch + 1e-9], dtype=torch.float64)
    values = log_barrier(z, t)
    assert values[0].item() == pytest.approx(values[2].item(), abs=1e-6)
    assert torch.all(values[1:] >= values[:-1] - 1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_loop_reference(shape):
    _, p, b = random_inputs(sum(shape) + 1, shape)
    terms = TightnessLoss(emptiness_weight=0.5, t=4.0)(None, p, b)
    assert terms["loss"].item() == pytest.approx(loss_reference(p.numpy(), b.numpy(), 0.5, 4.0), rel=1e-5)
    assert tightness_loss(p, b, 0.5, 4.0).item() == pytest.approx(terms["loss"].item(), rel=1e-6)


@given(seed=SEEDS, corner=CORNERS, size=st.tuples(*[st.integers(2, 4)] * 3))
@PROPERTY
def test_an_empty_line_costs_more_than_a_covered_one(seed, corner, size):
    """Filling the box meets every constraint; emptying one line of it breaks one and costs more."""
    box, region = box_in_cube(corner, size)
    filled = box.clone()
    holed = box.clone()
    line = [slice(c, c + 1) for c in corner]
    line[seed % 3] = region[seed % 3]
    holed[(0, 0, *line)] = 0
    loss = TightnessLoss()
    assert loss(None, holed, box)["tightness"] > loss(None, filled, box)["tightness"]
    assert loss(None, filled, box)["emptiness"].item() == pytest.approx(barrier_reference(0.0, 5.0))
    spilled = filled.clone()
    spilled[0, 0, 7, 7, 7] = 1 if not box[0, 0, 7, 7, 7] else 0
    assert loss(None, spilled, box)["emptiness"] >= loss(None, filled, box)["emptiness"]


def test_gradients_are_finite_for_certain_predictions():
    _, _, box = random_inputs(5, (2, 1, 6, 6, 6))
    probs = (torch.rand(2, 1, 6, 6, 6) > 0.5).float().requires_grad_(True)
    tightness_loss(probs, box).backward()
    assert torch.isfinite(probs.grad).all() and probs.grad.abs().sum() > 0


@pytest.mark.parametrize("name,value", [("emptiness_weight", -1.0), ("t", 0.0)])
def test_bad_hyperparameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        TightnessLoss(**{name: value})
