"""How well the pseudo-labels of a labelled wspet dataset match its true lesions, box by box.

For every box of every training case that has a label, the lesion that
``wspet.data.pseudo_labels.box_lesion`` finds in the box (before the uncertain voxels are marked) is
compared with the true lesion of that box: the 26-connected component of the label with the most
voxels inside it. Prints, for each rule that chooses the box's component
(``wspet.data.pseudo_labels.COMPONENTS``), the mean and spread of the Dice and how many boxes score
below 0.2 (a lesion taught as background), and the quartiles of the found lesion's volume over the
true lesion's (below 1: the method draws lesions smaller than the set's labels do), with the medians of
the share of the true lesion's voxels found and of the found voxels that lie outside it. It reads the labels, so it is a check of a method on a
labelled set, never a step of weak training; test cases are left out, so that a choice made
from it never reads a test label. ``--boxes tight`` uses one tight box per true lesion
instead of the set's boxes: the prompt boxes of ``predict.py boxes=FILE`` and its ``box_fallback``.
``--fill-holes`` fills the holes each found lesion encloses, as ``loss.pseudo_labels.fill_holes`` does.

    python scripts/pseudo_label_quality.py data/phantom data/phantom16 [--method otsu] [--boxes tight] [--span-box] [--fill-holes]
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from wspet.data.boxes import box_region
from wspet.data.format import load_image, load_label, read_dataset
from wspet.data.pseudo_labels import COMPONENTS, METHODS, box_lesion
from wspet.evaluation.reference_rows import tight_boxes
from wspet.metrics.overlap import dice_score
from wspet.postprocess.holes import without_holes

FAILED = 0.2  # a box whose label scores below this Dice teaches its lesion as background


def box_dices(
    root: str, method: str, component: str, boxes: str = "dataset", span_box: bool = False, fill: bool = False
) -> list[float]:
    """Dice of each labelled box's pseudo-label lesion with its true lesion, in case and box order;
    ``boxes``: the set's own (``dataset``) or the labels' tight boxes (``tight``); ``fill``: holes filled."""
    pairs = box_lesions(root, method, component, boxes, span_box, fill)
    return [float(dice_score(found, truth)) for found, truth in pairs]


def box_lesions(
    root: str, method: str, component: str, boxes: str = "dataset", span_box: bool = False, fill: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(found, truth)`` boolean masks inside each labelled box of the training cases (see :func:`box_dices`)."""
    index = read_dataset(root)
    for case in index.training:
        if case.label is None or (boxes == "dataset" and not case.boxes):
            continue
        image = load_image(case.image)
        label = np.asarray(load_label(case.label, image)) > 0
        lesions, _ = ndimage.label(label, np.ones((3, 3, 3)))
        for box in case.boxes if boxes == "dataset" else tight_boxes(label):
            region = box_region(box)
            inside = lesions[region]
            if not inside.any():
                continue
            ids, counts = np.unique(inside[inside > 0], return_counts=True)
            truth = inside == ids[np.argmax(counts)]
            found, _ = box_lesion(image.array[region].astype(np.float32), method, component=component, span_box=span_box)
            yield (without_holes(found) if fill else found), truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="wspet dataset folders with labels")
    parser.add_argument("--method", default="otsu", choices=METHODS)
    parser.add_argument("--boxes", default="dataset", choices=("dataset", "tight"))
    parser.add_argument("--span-box", action="store_true", help="lower each threshold until the lesion reaches every face")
    parser.add_argument("--fill-holes", action="store_true", help="fill the holes each found lesion encloses")
    args = parser.parse_args(argv)
    for root in args.roots:
        for component in COMPONENTS:
            pairs = list(box_lesions(root, args.method, component, args.boxes, args.span_box, args.fill_holes))
            scores = np.array([dice_score(found, truth) for found, truth in pairs])
            quartiles = np.percentile([found.sum() / truth.sum() for found, truth in pairs], [25, 50, 75])
            covered = np.median([(found & truth).sum() / truth.sum() for found, truth in pairs])
            outside = np.median([(found & ~truth).sum() / max(found.sum(), 1) for found, truth in pairs])
            print(f"{root} {args.method} {args.boxes} boxes, component={component}: {len(scores)} boxes, Dice "
                  f"{scores.mean():.3f} ± {scores.std():.3f}, {int((scores < FAILED).sum())} below {FAILED}, "
                  f"volume / true volume {' / '.join(f'{q:.2f}' for q in quartiles)} (quartiles), "
                  f"true voxels found {covered:.2f}, found voxels outside the truth {outside:.2f} (medians)")


if __name__ == "__main__":
    main()
