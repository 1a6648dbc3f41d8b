"""The argument checks every loss shares: hyper-parameters in range, and ``(B, 1, D, H, W)`` inputs.

A loss is called every step: on a GPU the value checks run on the device (no host sync per step);
shape, device and dtype checks are free (read from tensor metadata).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = ["check_hyperparameter", "check_volumes"]


def check_hyperparameter(
    name: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> float:
    """Return ``value`` as a float if it is a finite real number in the interval, else raise ValueError.

    The interval is ``[low, high]``; ``low_open`` / ``high_open`` exclude the end points.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or math.isinf(high) else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def _check_shape(name: str, x: Tensor, reference_name: str, reference: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    like = "" if x is reference else f" like {reference_name} {tuple(reference.shape)}"
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, 1, D, H, W){like}, got shape {tuple(x.shape)}")
    if x.shape[1] != 1:
        raise ValueError(f"{name} must have one channel (B, 1, D, H, W){like}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} has no voxels, got shape {tuple(x.shape)}")
    if x.shape != reference.shape:
        raise ValueError(f"{reference_name} shape {tuple(reference.shape)} != {name} shape {tuple(x.shape)}")
    if x.device != reference.device:
        raise ValueError(f"{reference_name} device {reference.device} != {name} device {x.device}")


def check_volumes(
    probs: Tensor, target: Tensor, image: Tensor | None = None, *, target_name: str = "target"
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate the losses' inputs and return them cast to the computation dtype.

    Args:
        probs: (B, 1, D, H, W) floating point sigmoid outputs in [0, 1].
        target: (B, 1, D, H, W) mask in {0, 1}; bool, integer or floating dtype.
        image: optional (B, 1, D, H, W) finite floating point network input.
        target_name: how ``target`` is named in error messages ("box" or "target").

    Returns:
        ``(probs, target, image)`` as float32, or float64 if any input is float64 (for gradcheck).
        Lower precisions (bf16, fp16 under autocast) are always raised to float32 so that sums over
        millions of voxels are not rounded to a few significant digits.

    Raises:
        ValueError: wrong rank, channel count, shape, device or dtype, or values out of range
            (probs outside [0, 1] or NaN, target not in {0, 1}, image not finite). On CUDA the
            value checks are device-side asserts (no host sync per step): a bad value fails a
            later CUDA call with a RuntimeError carrying the message.
    """
    if not isinstance(probs, Tensor):
        raise ValueError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    _check_shape("probs", probs, "probs", probs)
    _check_shape(target_name, target, "probs", probs)
    if image is not None:
        _check_shape("image", image, "probs", probs)

    if not probs.is_floating_point():
        raise ValueError(f"probs dtype {probs.dtype} is not floating point; pass sigmoid outputs")
    if image is not None and not image.is_floating_point():
        raise ValueError(f"image dtype {image.dtype} is not floating point (probs dtype {probs.dtype})")
    if target.is_complex():
        raise ValueError(
            f"{target_name} dtype {target.dtype} must be bool, integer or real (probs dtype {probs.dtype})"
        )

    inputs = [probs, target] + ([image] if image is not None else [])
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in inputs) else torch.float32
    probs, target = probs.to(dtype), target.to(dtype)
    image = image.to(dtype) if image is not None else None

    with torch.no_grad():
        bad_probs = ~((probs >= 0) & (probs <= 1)).all()
        bad_target = ~((target == 0) | (target == 1)).all()
        bad_image = ~torch.isfinite(image).all() if image is not None else torch.zeros((), dtype=torch.bool)
        if probs.device.type == "cuda":
            # Reading the flags back would stall the GPU at every step; a device-side assert fails the
            # next CUDA call instead, with these messages, and costs no host sync.
            torch._assert_async(~bad_probs, "probs must lie in [0, 1] (sigmoid outputs, not logits), got values outside or NaN")
            torch._assert_async(~bad_target, f"{target_name} must be a {{0, 1}} mask, got other values")
            torch._assert_async(~bad_image.to(probs.device), "image must be finite, got NaN or inf values")
            return probs, target, image
        # One host sync for all value checks; the messages are built only on failure.
        flags = torch.stack([bad_probs, bad_target, bad_image.to(bad_probs.device)]).tolist()
    if flags[0]:
        raise ValueError(
            f"probs must lie in [0, 1] (sigmoid outputs, not logits), got min {probs.min().item()!r}, "
            f"max {probs.max().item()!r}, NaN present: {bool(torch.isnan(probs).any())}"
        )
    if flags[1]:
        odd = target[(target != 0) & (target != 1)]
        raise ValueError(f"{target_name} must be a {{0, 1}} mask, got value {odd.flatten()[0].item()!r}")
    if flags[2]:
        raise ValueError("image must be finite, got NaN or inf values")
    return probs, target, image
