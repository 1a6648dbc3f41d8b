"""Post-processing of binary predictions (the Hydra `postprocess` group).

Every step is `fn(mask, image, spacing, **params) -> np.ndarray[bool]` on (i, j, k)
arrays with the spacing in mm, and never modifies its inputs:
- `morphology.open_and_filter`: the paper's "+M";
- `levelset.chan_vese_refine`: the paper's "L_Dice + LS";
- `holes.fill_holes`: a lesion's enclosed holes (a necrotic core) become lesion.

`box_prompt.fill_empty_boxes(mask, image, boxes)` keeps a prediction inside boxes given at test time
and segments a box the model left empty at 41% of its SUVmax (`predict.py boxes=FILE`, the report's
box-prompted rows); `box_prompt.restrict_to_boxes(mask, boxes)` only keeps.
"""

from __future__ import annotations

from wspet.postprocess.box_prompt import fill_empty_boxes, restrict_to_boxes
from wspet.postprocess.holes import fill_holes
from wspet.postprocess.levelset import chan_vese_refine
from wspet.postprocess.morphology import open_and_filter

__all__ = ["chan_vese_refine", "fill_empty_boxes", "fill_holes", "open_and_filter", "restrict_to_boxes"]
