"""How well the pseudo-labels of a labelled wspet dataset match its true lesions, box by box.

For every box of every case that has a label (training and test cases), the lesion that
``wspet.data.pseudo_labels.box_lesion`` finds in the box (before the uncertain voxels are marked) is
compared with the true lesion of that box: the 26-connected component of the label with the most
voxels inside it. Prints, for each rule that chooses the box's component
(``wspet.data.pseudo_labels.COMPONENTS``), the mean and spread of the Dice and how many boxes score
below 0.2 (a lesion taught as background). It reads the labels, so it is a check of a method on a
labelled set, never a step of weak training.

    python scripts/pseudo_label_quality.py data/phantom data/phantom16 [--method otsu]
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from wspet.data.boxes import box_region
from wspet.data.format import load_image, load_label, read_dataset
from wspet.data.pseudo_labels import COMPONENTS, METHODS, box_lesion
from wspet.metrics.overlap import dice_score

FAILED = 0.2  # a box whose label scores below this Dice teaches its lesion as background


def box_dices(root: str, method: str, component: str) -> list[float]:
    """Dice of each labelled box's pseudo-label lesion with its true lesion, in case and box order."""
    index = read_dataset(root)
    scores = []
    for case in [*index.training, *index.test]:
        if case.label is None or not case.boxes:
            continue
        image = load_image(case.image)
        lesions, _ = ndimage.label(np.asarray(load_label(case.label, image)) > 0, np.ones((3, 3, 3)))
        for box in case.boxes:
            region = box_region(box)
            inside = lesions[region]
            if not inside.any():
                continue
            ids, counts = np.unique(inside[inside > 0], return_counts=True)
            truth = inside == ids[np.argmax(counts)]
            found, _ = box_lesion(image.array[region].astype(np.float32), method, component=component)
            scores.append(float(dice_score(found, truth)))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="wspet dataset folders with labels")
    parser.add_argument("--method", default="otsu", choices=METHODS)
    args = parser.parse_args(argv)
    for root in args.roots:
        for component in COMPONENTS:
            scores = np.array(box_dices(root, args.method, component))
            print(f"{root} {args.method} component={component}: {len(scores)} boxes, Dice "
                  f"{scores.mean():.3f} ± {scores.std():.3f}, {int((scores < FAILED).sum())} below {FAILED}")


if __name__ == "__main__":
    main()
