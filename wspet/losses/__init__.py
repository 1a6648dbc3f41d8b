"""The losses of Afshari et al. 2019 (section 3) and those beyond it, as plain functions and thin ``nn.Module`` wrappers.

All tensors are ``(B, 1, D, H, W)``; each function averages a per-sample loss over the batch and
returns a 0-dim float32 tensor. The modules share ``forward(image, probs, target) -> dict`` with
the differentiable total under ``"loss"``. See docs/losses.md.
"""

from __future__ import annotations

from wspet.losses.box_projection import BoxProjectionLoss, box_projection_loss
from wspet.losses.composite import CompositeLoss, composite_loss
from wspet.losses.dice import DiceLoss, dice_loss
from wspet.losses.dice_ce import DiceCELoss, dice_ce_loss
from wspet.losses.modified_dice import ModifiedDiceLoss, modified_dice_loss
from wspet.losses.mumford_shah import MumfordShahLoss, mumford_shah_loss
from wspet.losses.tightness import TightnessLoss, log_barrier, tightness_loss

__all__ = [
    "BoxProjectionLoss",
    "CompositeLoss",
    "DiceCELoss",
    "DiceLoss",
    "ModifiedDiceLoss",
    "MumfordShahLoss",
    "TightnessLoss",
    "box_projection_loss",
    "composite_loss",
    "dice_ce_loss",
    "dice_loss",
    "log_barrier",
    "modified_dice_loss",
    "mumford_shah_loss",
    "tightness_loss",
]
