"""Reading a checkpoint file, which is untrusted input: weights and plain values only, targets allow-listed.

The one place a checkpoint is read (docs/security.md): :meth:`wspet.model.module.LesionSegmenter.from_checkpoint`,
the network initialisation of a second stage, the stage cache and the run summary all come here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

import wspet.losses

# A checkpoint is untrusted input (docs/security.md): it may name only these, with plain arguments.
PLAIN_VALUES = (bool, int, float, str, type(None))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Any checkpoint file as plain data, read weights-only: tensors and plain containers, nothing that runs.

    Raises FileNotFoundError for a missing file and ValueError naming the file when it holds
    anything else (a pickled object, a truncated or foreign file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean the same to a user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint holding only weights and plain values ({reason})"
        ) from None
    return checkpoint


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A wspet checkpoint as plain data (state_dict tensors, hyper-parameters); no code in it runs.

    ``torch.load(weights_only=True)`` refuses any pickled object other than tensors and plain
    containers before it is built. The hyper-parameters are then checked: ``loss`` must name a
    class of ``wspet.losses`` (:func:`loss_classes`) and ``optimizer`` one of ``torch.optim``,
    each with plain number, string, bool or list arguments. Nothing is instantiated here.

    Raises FileNotFoundError for a missing file and ValueError naming the file otherwise.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, Mapping) or "net" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a wspet checkpoint (no 'net' hyper-parameters or no state_dict)")
    if not isinstance(hparams["net"], Mapping) or not all(isinstance(k, str) for k in hparams["net"]):
        raise ValueError(f"{path}: hyper-parameter net {hparams['net']!r} is not a mapping of U-Net arguments")
    weights = checkpoint["state_dict"]
    if not isinstance(weights, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise ValueError(f"{path}: state_dict {_shown(weights)} is not a mapping of weight names to tensors")
    if hparams.get("loss") is not None:
        check_target(hparams["loss"], loss_classes(), f"{path}: hyper-parameter loss")
    if hparams.get("optimizer") is not None:
        check_target(hparams["optimizer"], optimizer_classes(), f"{path}: hyper-parameter optimizer")
    return checkpoint


def loss_classes() -> dict[str, type]:
    """Dotted path -> class for every class ``wspet.losses`` exports (short and full module paths).

    Read from ``wspet.losses.__all__`` on each call, so a loss added there is allowed at once.
    """
    classes = {}
    for name in wspet.losses.__all__:
        member = getattr(wspet.losses, name)
        if isinstance(member, type) and issubclass(member, torch.nn.Module):
            classes[f"wspet.losses.{name}"] = member
            classes[f"{member.__module__}.{member.__qualname__}"] = member
    return classes


def optimizer_classes() -> dict[str, type]:
    """Dotted path -> class for every optimizer ``torch.optim`` exports."""
    classes = {}
    for name in torch.optim.__all__:
        member = getattr(torch.optim, name)
        if isinstance(member, type) and issubclass(member, torch.optim.Optimizer) and member is not torch.optim.Optimizer:
            classes[f"torch.optim.{name}"] = member
            classes[f"{member.__module__}.{member.__qualname__}"] = member
    return classes


def check_target(spec: object, allowed: Mapping[str, type], where: str) -> None:
    """Refuse (ValueError starting with ``where``) a ``_target_`` config outside ``allowed``.

    Its other keys must be plain values or lists of them: a nested mapping could be another
    ``_target_``, and ``_partial_``, ``_args_`` and the like steer Hydra itself.
    """
    target = spec.get("_target_") if isinstance(spec, Mapping) else None
    if not isinstance(target, str) or target not in allowed:
        names = sorted(name for name in allowed if name.count(".") == 2)
        raise ValueError(f"{where}: _target_ {_shown(target if isinstance(spec, Mapping) else spec)} is not one of {names}")
    for key, value in spec.items():
        if key == "_target_":
            continue
        plain = isinstance(value, PLAIN_VALUES) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, PLAIN_VALUES) for v in value))
        if not isinstance(key, str) or key.startswith("_") or not plain:
            raise ValueError(
                f"{where}: {target} argument {_shown(key)}={_shown(value)} is not a plain number, string, bool or list of them"
            )


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
