"""The two options of mdice_ms beyond the paper: one step per box in L_MDice, the squared Chan-Vese term in L_MS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from tests.losses.helpers import PROPERTY, SEEDS, random_inputs
from wspet.losses import CompositeLoss, ModifiedDiceLoss, MumfordShahLoss, modified_dice_loss, mumford_shah_loss
from wspet.losses.modified_dice import box_components


def two_boxes() -> torch.Tensor:
    box = torch.zeros(1, 1, 12, 12, 12)
    box[..., 1:5, 1:5, 1:5] = 1  # 64 voxels
    box[..., 7:11, 7:11, 7:11] = 1
    return box


def per_box_reference(p: np.ndarray, b: np.ndarray, parts: list[np.ndarray], alpha: float) -> float:
    """Eq. (3) with one step per box: numerator FP + sum_k M_k (1 - H_k), denominator sum p + sum_k (H_k sum(p b_k) + (1 - H_k) sum b_k)."""
    p, b = p.astype(np.float64), b.astype(np.float64)
    numerator, denominator = (p * (1 - b)).sum(), p.sum()
    for part in parts:
        overlap, size = (p * part).sum(), part.sum()
        step = overlap / size > alpha
        numerator += 0.0 if step else size - overlap
        denominator += overlap if step else size
    return numerator / denominator


@given(seed=SEEDS)
@PROPERTY
def test_one_box_per_volume_gives_the_papers_loss(seed):
    _, p, b = random_inputs(seed % 10_000, (2, 1, 5, 6, 4))
    one = torch.zeros_like(b)
    one[..., 1:4, 2:5, 1:3] = 1  # a single box per sample: per_box and union agree
    assert modified_dice_loss(p, one, gate="per_box").item() == pytest.approx(modified_dice_loss(p, one).item(), rel=1e-6)


def test_each_box_gets_its_own_step():
    box = two_boxes()
    probs = torch.full_like(box, 0.01)
    probs[..., 1:5, 1:5, 1:5] = 0.9  # the first box filled past alpha, the second not
    parts = [m.reshape(box.shape[2:]).numpy() for m in box_components(box)[0]]
    assert len(parts) == 2 and all(part.sum() == 64 for part in parts)
    expected = per_box_reference(probs[0, 0].numpy(), box[0, 0].numpy(), parts, 0.1)
    assert modified_dice_loss(probs, box, gate="per_box").item() == pytest.approx(expected, rel=1e-5)
    # With one step over the union (fraction 0.455 > alpha) the missed second box would cost nothing.
    assert modified_dice_loss(probs, box, gate="per_box").item() > modified_dice_loss(probs, box).item()


def test_the_missed_box_still_pulls_its_voxels():
    box = two_boxes()
    probs = torch.full_like(box, 0.01)
    probs[..., 1:5, 1:5, 1:5] = 0.9
    probs.requires_grad_(True)
    modified_dice_loss(probs, box, gate="per_box").backward()
    union = probs.detach().clone().requires_grad_(True)
    modified_dice_loss(union, box).backward()
    per_box_pull, union_pull = -probs.grad[..., 7:11, 7:11, 7:11], -union.grad[..., 7:11, 7:11, 7:11]
    # Past the union's step only the denominator still grows with p there: a weak pull.
    assert per_box_pull.min() > 2 * union_pull.max() > 0  # 0.0072 vs 0.0018 per voxel here


def squared_reference(i: np.ndarray, p: np.ndarray, b: np.ndarray, w1: float, w2: float, eps: float) -> float:
    i, p, b = (a.astype(np.float64) for a in (i, p, b))
    inside = 0.5 * (1 + 2 / np.pi * np.arctan((p - 0.5) / eps))
    c1 = (i * inside * b).sum() / (inside * b).sum()
    c2 = (i * (1 - inside) * b).sum() / ((1 - inside) * b).sum()
    return float((w1 * ((i - c1) ** 2 * inside * b).sum() + w2 * ((i - c2) ** 2 * (1 - inside) * b).sum()) / b.sum())


@given(seed=SEEDS)
@PROPERTY
def test_squared_data_term_matches_its_reference_and_is_never_negative(seed):
    i, p, b = random_inputs(seed % 10_000, (1, 1, 5, 4, 6))
    b[..., 1:3, 1:3, 1:4] = 1
    got = mumford_shah_loss(i, p, b, w1=1.0, w2=3.0, eps=0.03, data_term="chan_vese").item()
    assert got == pytest.approx(squared_reference(i.numpy(), p.numpy(), b.numpy(), 1.0, 3.0, 0.03), rel=1e-4)
    assert got >= 0


def test_squared_data_term_is_least_on_the_bright_region():
    image = torch.zeros(1, 1, 8, 8, 8)
    image[..., 2:6, 2:6, 2:6] = 5.0
    box = torch.zeros_like(image)
    box[..., 1:7, 1:7, 1:7] = 1
    right = torch.where(image > 0, 0.99, 0.01)
    shifted = torch.roll(right, 1, dims=2)
    loss = MumfordShahLoss(data_term="chan_vese")
    assert loss(image, right, box)["loss"] < loss(image, shifted, box)["loss"]


@pytest.mark.parametrize(
    "build,match", [
        (lambda: ModifiedDiceLoss(gate="box"), "gate 'box'"),
        (lambda: MumfordShahLoss(data_term="l1"), "data_term 'l1'"),
        (lambda: CompositeLoss(gate="each"), "gate 'each'"),
    ],
)
def test_unknown_options_are_refused_naming_them(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_composite_passes_both_options_on():
    image, probs, _ = random_inputs(3, (1, 1, 12, 12, 12))
    box = two_boxes()
    options = CompositeLoss(gate="per_box", data_term="chan_vese")(image, probs, box)
    expected = 10.0 * modified_dice_loss(probs, box, gate="per_box") + mumford_shah_loss(image, probs, box, data_term="chan_vese")
    assert options["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
