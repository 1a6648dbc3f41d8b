"""The three non-learned reference rows of the report: predictions made from tight boxes
around the true lesions of a test case, without any training.

- `box`: the union of the tight boxes is the prediction (what a box annotation alone
  gives; its Dice is the paper's "box annotation vs ground truth" overlap, 28% there).
- `box_threshold`: inside each tight box, the voxels at or above 41% of that box's
  SUVmax (the clinical fixed-threshold method); the union over the boxes. It stands in
  for the paper's semi-automatic row (SA), which needs a click per lesion.
- `box_otsu`: inside each tight box, the lesion that box prompts join to a model's mask
  (`wspet.postprocess.box_prompt.fill_empty_boxes` on an empty mask: Otsu's threshold of
  the box, the component most present in its middle, its holes filled). The report's
  `box_prompted` row minus this one is what the model adds inside a box.

All read the test label, so they get a person's help at test time that the learned
rows do not get; the report says so under its table. Arrays are (i, j, k) as nibabel
loads them. Every function here has the signature `fn(image, label) -> bool array`,
so the report can run them alike (`REFERENCE_ROWS`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from wspet.data.boxes import Box, boxes_from_label, boxes_to_mask
from wspet.postprocess.box_prompt import fill_empty_boxes

# The clinical fixed threshold: 41% of the lesion's SUVmax (Boellaard et al., EANM).
DEFAULT_FRACTION = 0.41


def tight_boxes(label: Any) -> list[Box]:
    """One tight half-open box `[i0, j0, k0, i1, j1, k1]` per 26-connected component of
    `label != 0` (shape (I, J, K)), in `scipy.ndimage.label` order; `[]` for an empty label.
    """
    return boxes_from_label(np.asarray(label), margin_vox=0, scale=1.0, connectivity=26)


def _check_pair(image: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    img, lab = np.asarray(image), np.asarray(label)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} != label shape {lab.shape}")
    if lab.ndim != 3:
        raise ValueError(f"label shape {lab.shape} is not 3-D (i, j, k)")
    return img, lab


def box_prediction(image: Any, label: Any) -> np.ndarray:
    """The union of the tight boxes of `label`'s lesions as a bool (I, J, K) mask.

    `image` is not read (only its shape is checked); it is taken so that every
    reference row has one signature. All False for an empty label.
    """
    _, lab = _check_pair(image, label)
    return boxes_to_mask(tight_boxes(lab), lab.shape).astype(bool)


def box_threshold_prediction(
    image: Any, label: Any, fraction: float = DEFAULT_FRACTION
) -> np.ndarray:
    """Fixed-threshold segmentation inside each tight box, as a bool (I, J, K) mask.

    Per box: the voxels with `image >= fraction * max(image in the box)`; the result is
    the union over the boxes (boxes may overlap; each uses its own maximum). The
    threshold is a ratio, so the image's unit (SUV or raw) does not matter. A box whose
    maximum is <= 0 (no uptake at all) selects nothing rather than the whole box.
    All False for an empty label. Raises ValueError for a `fraction` outside (0, 1] and
    for a non-finite image value inside a box.
    """
    if not (isinstance(fraction, (int, float, np.number)) and 0.0 < float(fraction) <= 1.0):
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    img, lab = _check_pair(image, label)
    pred = np.zeros(lab.shape, dtype=bool)
    for i0, j0, k0, i1, j1, k1 in tight_boxes(lab):
        values = img[i0:i1, j0:j1, k0:k1]
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"image: non-finite value inside box {[i0, j0, k0, i1, j1, k1]}"
            )
        peak = float(values.max())
        # `values > 0` only matters when peak <= 0, where every voxel would pass.
        pred[i0:i1, j0:j1, k0:k1] |= (values >= fraction * peak) & (values > 0)
    return pred


def box_otsu_prediction(image: Any, label: Any) -> np.ndarray:
    """The box prompts' classical lesion inside each tight box, as a bool (I, J, K) mask.

    What ``predict.py boxes=FILE`` gives for a model that predicts nothing: per tight box of
    `label`, Otsu's lesion of the box with its holes filled (:func:`fill_empty_boxes` with its
    defaults); the union over the boxes. All False for an empty label.
    """
    img, lab = _check_pair(image, label)
    return fill_empty_boxes(np.zeros(lab.shape, dtype=bool), img, tight_boxes(lab))[0]


# Row name -> fn(image, label) -> bool (I, J, K) prediction, in the report's row order.
REFERENCE_ROWS: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "box": box_prediction,
    "box_threshold": box_threshold_prediction,
    "box_otsu": box_otsu_prediction,
}
