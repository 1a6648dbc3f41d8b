"""A second phantom generator, written apart from wspet's: whole-torso FDG-PET volumes.

It checks that wspet's defaults hold on a set the project was not built on (docs/results/torso-check.md).
Nothing in it comes from ``wspet.datasets.phantom``: another anatomy (lungs, liver, a heart of variable
uptake, kidneys, spine, bladder), another grid (96 x 80 x 112 voxels of 4 mm), another blur (7 mm FWHM)
and noise, lesions made of one to three overlapping ellipsoids (radius 5-16 mm, +2 to +12 SUV) in the
lungs, the liver or soft tissue, and boxes 1-3 voxels wider than each lesion on each side. The label
is the lesion's support before the blur. Writes a wspet dataset (docs/dataset_format.md).

    python scripts/torso_phantoms.py data/torso --cases 24 --test-cases 8 --seed 3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SHAPE = (96, 80, 112)
SPACING_MM = 4.0
FWHM_MM = 7.0


def ellipsoid(grid, centre, radii) -> np.ndarray:
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii)) <= 1


def anatomy(grid, rng) -> tuple[np.ndarray, list[np.ndarray]]:
    """Activity in SUV and the regions lesions may grow in (lungs, liver, other soft tissue)."""
    size = [n * SPACING_MM for n in SHAPE]
    cx, cy, height = size[0] / 2, size[1] / 2, size[2]
    activity = np.zeros(SHAPE, np.float32)
    body = ellipsoid(grid[:2], (cx, cy), (size[0] * rng.uniform(.40, .46), size[1] * rng.uniform(.36, .42)))
    activity[body] = rng.uniform(.6, 1.0)
    lungs = [ellipsoid(grid, (cx + side * 55, cy - 5, height * .62), (45, 50, 90)) & body for side in (-1, 1)]
    for lung in lungs:
        activity[lung] = rng.uniform(.25, .4)
    liver = ellipsoid(grid, (cx - 45, cy, height * .3), (60, 55, 45)) & body & ~lungs[0]
    activity[liver] = rng.uniform(1.8, 2.6)
    heart = ellipsoid(grid, (cx + 15, cy + 20, height * .55), (38, 32, 35))
    blood_pool = ellipsoid(grid, (cx + 15, cy + 20, height * .55), (25, 20, 23))
    activity[heart & ~blood_pool] = rng.uniform(1.5, 12)
    activity[blood_pool] = 1.2
    for side in (-1, 1):
        activity[ellipsoid(grid, (cx + side * 50, cy - 40, height * .18), (18, 14, 30)) & body] = rng.uniform(2.5, 6)
    activity[ellipsoid(grid, (cx, cy - 50, height / 2), (12, 12, 400))] = 1.6
    activity[ellipsoid(grid, (cx, cy + 20, 20), (30, 25, 22))] = rng.uniform(5, 25)
    lung = lungs[0] | lungs[1]
    return activity, [lung, liver, body & ~liver & ~lung]


def add_lesions(activity, regions, grid, rng) -> np.ndarray:
    """Adds 1-6 lesions to ``activity`` in place; returns their support (the label)."""
    label = np.zeros(SHAPE, bool)
    body = regions[0] | regions[1] | regions[2]
    for _ in range(rng.integers(1, 7)):
        region = regions[rng.choice(3, p=[.4, .3, .3])]
        voxels = np.argwhere(region)
        centre = voxels[rng.integers(len(voxels))] * SPACING_MM
        lesion = np.zeros(SHAPE, bool)
        radius = rng.uniform(5, 16)
        for _ in range(rng.integers(1, 4)):
            lesion |= ellipsoid(grid, centre + rng.normal(0, radius / 2, 3), radius * rng.uniform(.6, 1.2, 3))
        lesion &= body
        label |= lesion
        activity[lesion] = activity[lesion] + rng.uniform(2.0, 12)
    return label


def scanner(activity, rng) -> np.ndarray:
    """The PET: activity blurred by the PSF, with multiplicative correlated noise and a little additive."""
    blurred = ndimage.gaussian_filter(activity, FWHM_MM / 2.355 / SPACING_MM)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 0.7)
    noise /= noise.std()
    image = blurred * (1 + 0.12 * noise) + 0.02 * rng.normal(0, 1, SHAPE)
    return np.clip(image, 0, None).astype(np.float32)


def coarse_boxes(label, rng) -> list[list[int]]:
    components, _ = ndimage.label(label, np.ones((3, 3, 3)))
    boxes = []
    for found in ndimage.find_objects(components):
        margin = rng.integers(1, 4, 6)
        low = [max(0, found[a].start - margin[a]) for a in range(3)]
        high = [min(SHAPE[a], found[a].stop + margin[3 + a]) for a in range(3)]
        boxes.append([int(v) for v in low + high])
    return boxes


def make_case(rng) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    grid = np.meshgrid(*[np.arange(n) * SPACING_MM for n in SHAPE], indexing="ij")
    activity, regions = anatomy(grid, rng)
    label = add_lesions(activity, regions, grid, rng)
    return scanner(activity, rng), label.astype(np.uint8), coarse_boxes(label, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if (args.out / "dataset.json").exists():
        parser.error(f"{args.out}/dataset.json exists; choose another folder")
    rng = np.random.default_rng(args.seed)
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    dataset = {"name": "torso-check", "description": __doc__.splitlines()[0], "training": [], "test": []}
    for index in range(args.cases + args.test_cases):
        image, label, boxes = make_case(rng)
        split, key = ("Tr", "training") if index < args.cases else ("Ts", "test")
        name = f"torso_{index:03d}"
        for folder, volume in ((f"images{split}", image), (f"labels{split}", label)):
            (args.out / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(volume, affine), args.out / folder / f"{name}.nii.gz")
        dataset[key].append({"image": f"images{split}/{name}.nii.gz", "label": f"labels{split}/{name}.nii.gz",
                             "boxes": boxes})
    (args.out / "dataset.json").write_text(json.dumps(dataset, indent=1))


if __name__ == "__main__":
    main()
