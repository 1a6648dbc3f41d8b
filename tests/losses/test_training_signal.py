"""The composite loss (eq. 1) alone turns a box-shaped prediction into a lesion-shaped one.

Free logits stand in for the network: ``probs = sigmoid(logits)``, optimised with Adam on one
phantom-like volume, starting from the box. The Dice with the true lesion must rise well above
the box's own Dice. (Self-contained: does not use wspet.datasets.phantom.)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from wspet.losses import composite_loss

SIZE = 32


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (z-normalised image, lesion mask, box mask), each (SIZE,) * 3.

    Background: SUV ~1 with smooth noise; lesion: an irregular blob of SUV ~8, Gaussian blurred
    (PET resolution), plus white noise; box: about twice the lesion's extent on each axis.
    """
    rng = np.random.default_rng(seed)
    shape = (SIZE,) * 3
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    background = 1.0 + 0.15 * smooth / smooth.std()
    grid = np.indices(shape, dtype=float)
    radius = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (16, 15, 17), (4.5, 3.5, 4.0))))
    wobble = 3 * ndimage.gaussian_filter(rng.standard_normal(shape), 3)  # irregular outline
    lesion = ndimage.binary_opening(radius + wobble < 1.0)
    image = background + 7.0 * ndimage.gaussian_filter(lesion.astype(float), 1.0)
    image += 0.2 * rng.standard_normal(shape)
    image = (image - image.mean()) / image.std()  # as the network input is normalised

    lo, hi = np.argwhere(lesion).min(0), np.argwhere(lesion).max(0) + 1
    centre, half = (lo + hi) / 2, (hi - lo)  # half-width of a box of twice the extent
    box_lo = np.clip(np.floor(centre - half), 0, SIZE).astype(int)
    box_hi = np.clip(np.ceil(centre + half), 0, SIZE).astype(int)
    box = np.zeros(shape, dtype=bool)
    box[tuple(slice(a, b) for a, b in zip(box_lo, box_hi))] = True
    return image, lesion, box


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_composite_loss_shrinks_box_prediction_toward_lesion():
    torch.manual_seed(0)
    image, lesion, box = phantom()
    as_volume = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    image_t, box_t = as_volume(image), as_volume(box)
    logits = (4.0 * (2 * box_t - 1)).requires_grad_(True)  # the box-shaped prediction, p ~ 0.98 / 0.02
    optimiser = torch.optim.Adam([logits], lr=0.2)

    dice_box = dice(box, lesion)
    for _ in range(200):
        optimiser.zero_grad()
        loss = composite_loss(image_t, torch.sigmoid(logits), box_t)
        loss.backward()
        optimiser.step()
    prediction = (torch.sigmoid(logits) > 0.5)[0, 0].numpy()
    dice_after = dice(prediction, lesion)

    print(f"lesion {lesion.sum()} voxels, box {box.sum()}; Dice box {dice_box:.3f} -> prediction {dice_after:.3f}")
    assert 0.05 < dice_box < 0.2  # the box is a poor segmentation to start from
    assert dice_after > dice_box + 0.3
    assert prediction[lesion].mean() > 0.9  # the lesion is kept ...
    assert not prediction[~box].any()  # ... and nothing grows outside the box


def test_box_projection_loss_keeps_the_lesion_inside_its_tight_box():
    """BoxInst's terms on free logits, from the lesion's tight box: the lesion is kept, nothing grows outside.

    On free logits the terms do little more (Dice 0.68 -> 0.69 here): a box-filled prediction is
    already consistent with them. BoxInst's gain comes from a network sharing what it learns across
    volumes, which this test cannot show.
    """
    from wspet.losses import box_projection_loss

    torch.manual_seed(0)
    image, lesion, _ = phantom()
    lo, hi = np.argwhere(lesion).min(0), np.argwhere(lesion).max(0) + 1
    tight = np.zeros_like(lesion)
    tight[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    as_volume = lambda a: torch.tensor(a, dtype=torch.float32)[None, None]  # noqa: E731
    image_t, box_t = as_volume(image), as_volume(tight)
    logits = (4.0 * (2 * box_t - 1)).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.2)
    for _ in range(200):
        optimiser.zero_grad()
        box_projection_loss(image_t, torch.sigmoid(logits), box_t).backward()
        optimiser.step()
    prediction = (torch.sigmoid(logits) > 0.5)[0, 0].numpy()
    print(f"Dice tight box {dice(tight, lesion):.3f} -> prediction {dice(prediction, lesion):.3f}, outside {prediction[~tight].sum()} of {prediction.sum()}")
    assert dice(prediction, lesion) >= dice(tight, lesion) - 0.02
    assert prediction[lesion].mean() > 0.9
    assert prediction[~tight].sum() < 0.1 * prediction.sum()  # the pairwise term may spill over a little
