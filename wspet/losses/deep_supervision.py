"""Deep supervision: the loss applied at the U-Net's coarser decoder levels too (nnU-Net, Isensee et al. 2021).

Each auxiliary head of :class:`~wspet.model.unet3d.UNet3D` predicts the volume at ``1 / 2**s`` of
its size. Its loss is the same loss module, given the image averaged over ``2**s`` voxel blocks and
the target sampled with nearest neighbours (``nearest-exact``, as nnU-Net's
``DownsampleSegForDSTransform``), so box masks stay boxes and pseudo-labels keep their ignore value.
The weights are nnU-Net's: ``1 / 2**s``, normalised to sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["deep_supervision_weights", "deep_supervision_loss"]


def deep_supervision_weights(scales: int) -> list[float]:
    """``1 / 2**s`` for ``s = 0 .. scales - 1``, normalised to sum to 1 (``[1.0]`` for one scale)."""
    if scales < 1:
        raise ValueError(f"deep supervision needs at least one scale, got {scales}")
    raw = [0.5**s for s in range(scales)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(
    loss_fn: Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]],
    image: Tensor,
    probs: Sequence[Tensor],
    target: Tensor,
) -> dict[str, Tensor]:
    """The weighted sum of ``loss_fn`` over scales; the other terms are those of the top scale.

    Args:
        loss_fn: a loss module of ``wspet.losses``: ``(image, probs, target) -> {"loss", ...}``.
        image: (B, 1, D, H, W) the network's normalised input.
        probs: the top head's probabilities ``(B, 1, D, H, W)``, then each auxiliary head's,
            ``(B, 1, D / 2**s, H / 2**s, W / 2**s)`` for ``s = 1, 2, ...``.
        target: (B, 1, D, H, W) the mask the loss is given (box, label or pseudo-label).

    Returns:
        ``loss_fn``'s terms at the top scale, with ``"loss"`` replaced by the weighted sum over
        scales and ``"loss_top"`` (detached) the top scale's own loss, comparable to a run
        without deep supervision.
    """
    terms = dict(loss_fn(image, probs[0], target))
    total = 0.0
    for weight, scaled_probs in zip(deep_supervision_weights(len(probs)), probs):
        size = scaled_probs.shape[2:]
        if size == image.shape[2:]:
            loss = terms["loss"]
        else:
            factor = image.shape[2] // size[0]
            scaled_image = F.avg_pool3d(image, kernel_size=factor)
            scaled_target = F.interpolate(target, size=size, mode="nearest-exact")
            loss = loss_fn(scaled_image, scaled_probs, scaled_target)["loss"]
        total = total + weight * loss
    terms["loss_top"] = terms["loss"].detach()
    terms["loss"] = total
    return terms
