"""How a PET volume is prepared for the network: one voxel spacing and one intensity scale.

The same two steps run in training (as TorchIO transforms of each subject, before cropping
and augmentation) and at inference (on a whole volume of any size, whose probabilities are
then resampled back to the volume's own grid). They travel in the checkpoint, so
``predict.py`` prepares a scan exactly as the network's training data was prepared.

- ``target_spacing``: resample every volume to this spacing in mm (linear for the PET,
  nearest neighbour for boxes and labels) so that a network trained on scans of several
  scanners sees one voxel size; ``None`` keeps each volume's own spacing (the data check
  then refuses datasets whose spacings differ). An axis whose spacing is already within
  :data:`SPACING_RTOL` of the target is left as it is (:func:`resampled_spacing`), and a volume
  with every axis so is not resampled at all.
- ``intensity``: ``zscore`` standardises each volume by its own mean and standard deviation
  (what the paper's phantoms are trained with); ``suv`` divides SUV by the fixed
  ``suv_scale``. A z-score depends on the field of view (a 10 cm crop around a tumour and the
  whole body have different means), a fixed SUV scale does not: use ``suv`` when training
  crops and predicting whole-body scans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchio as tio
from nibabel.affines import voxel_sizes

from wspet.data.format import MAX_VOXELS

INTENSITY_MODES = ("zscore", "suv")
# An axis whose spacing is this close to the target (relative) keeps its own. NIfTI headers store
# spacing in float32 (3.27 mm reads 3.2699999809), and TorchIO's Resample floors the new grid's
# size and centres it: "resampling" 64 slices of 3.2699999809 mm to 3.27 mm gave 63, each half a
# slice off the old ones, so the whole volume was interpolated between neighbouring slices and its
# last slice lost (every scan of the real sarcoma set, docs/training.md).
SPACING_RTOL = 1e-3


def resampled_spacing(spacing: Sequence[float], target: Sequence[float] | None) -> tuple[float, float, float] | None:
    """The spacing (mm) a volume of ``spacing`` is resampled to for ``target``; None when it need not be.

    Each axis gets the target's spacing unless its own is within :data:`SPACING_RTOL` of it, where it
    keeps its own; when every axis keeps its own (or ``target`` is None) nothing is resampled.
    """
    if target is None:
        return None
    own = np.asarray(spacing, dtype=np.float64)
    wanted = np.asarray(target, dtype=np.float64)
    close = np.isclose(own, wanted, rtol=SPACING_RTOL, atol=0.0)
    if close.all():
        return None
    return tuple(float(s) for s in np.where(close, own, wanted))


class ResampleToSpacing(tio.SpatialTransform):
    """TorchIO's ``Resample`` to ``spacing`` (mm) for the axes :func:`resampled_spacing` says need it.

    A subject already at ``spacing`` comes back untouched, not interpolated onto a grid a slice
    smaller (see :data:`SPACING_RTOL`).
    """

    def __init__(self, spacing: Sequence[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.spacing = tuple(float(s) for s in spacing)
        self.args_names = ["spacing"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        spacing = resampled_spacing(subject.spacing, self.spacing)
        return subject if spacing is None else tio.Resample(spacing, copy=False)(subject)


class SuvScaling(tio.IntensityTransform):
    """Divide intensity images by a fixed SUV ``scale``: the same map for any field of view."""

    def __init__(self, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.args_names = ["scale"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            image.set_data(image.data.float() / self.scale)
        return subject


@dataclass(frozen=True)
class Preprocessing:
    """Target spacing (mm, or None for native) and intensity normalisation of network inputs.

    Raises ValueError for a spacing that is not 3 positive finite numbers, an unknown
    intensity mode, or a scale that is not positive.
    """

    target_spacing: tuple[float, float, float] | None = None
    intensity: str = "zscore"
    suv_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.target_spacing is not None:
            spacing = tuple(float(s) for s in self.target_spacing)
            if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"target_spacing {self.target_spacing!r} is not 3 positive sizes in mm (or null)")
            object.__setattr__(self, "target_spacing", spacing)
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity {self.intensity!r} is not one of {INTENSITY_MODES}")
        if not (math.isfinite(float(self.suv_scale)) and float(self.suv_scale) > 0):
            raise ValueError(f"suv_scale {self.suv_scale!r} is not a positive number")

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "Preprocessing":
        """From a checkpoint's or config's dict; ``None`` (checkpoints before wspet stored it) is the default."""
        if values is None:
            return cls()
        unknown = set(values) - {"target_spacing", "intensity", "suv_scale"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        spacing = values.get("target_spacing")
        return cls(
            target_spacing=None if spacing is None else tuple(spacing),
            intensity=values.get("intensity", "zscore"),
            suv_scale=values.get("suv_scale", 1.0),
        )

    def as_dict(self) -> dict:
        """Plain values for checkpoints and logs (the spacing as a list)."""
        values = asdict(self)
        if self.target_spacing is not None:
            values["target_spacing"] = list(self.target_spacing)
        return values

    def transforms(self) -> list[tio.Transform]:
        """TorchIO steps for a subject: resampling (if any), then intensity normalisation of ``image``."""
        steps: list[tio.Transform] = []
        if self.target_spacing is not None:
            steps.append(ResampleToSpacing(self.target_spacing))
        if self.intensity == "zscore":
            steps.append(tio.ZNormalization(include=["image"]))
        else:
            steps.append(SuvScaling(self.suv_scale, include=["image"]))
        return steps

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """The intensity step on an array of any shape, float32; ValueError for a constant z-scored image."""
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32))
        if self.intensity == "suv":
            return (tensor / self.suv_scale).numpy()
        mean, std = tensor.mean(), tensor.std()  # unbiased std, as TorchIO
        if not std > 0:
            raise ValueError(f"image shape {image.shape} is constant ({float(mean):.4g}): nothing to normalise")
        return ((tensor - mean) / std).numpy()

    def to_network_grid(self, image: np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(array, affine)`` of ``image`` ``(I, J, K)`` resampled to ``target_spacing`` (unchanged without one,
        or when it is at that spacing already: :func:`resampled_spacing`)."""
        if self.target_spacing is None:
            return image, affine
        if affine is None:
            raise ValueError(f"resampling to {self.target_spacing} mm needs the image's affine, got None")
        spacing = resampled_spacing(voxel_sizes(affine), self.target_spacing)
        if spacing is None:
            return image, affine
        self.check_grid(image.shape, affine)
        resampled = tio.Resample(spacing)(_scalar(image, affine))
        return resampled.data[0].numpy(), resampled.affine

    def network_shape(self, shape: Sequence[int], affine: np.ndarray) -> tuple[int, ...]:
        """The shape (at most) a volume of ``shape`` and ``affine`` gets at ``target_spacing`` (its own without one)."""
        spacing = None if self.target_spacing is None else voxel_sizes(affine)
        target = resampled_spacing(spacing, self.target_spacing)
        if target is None:
            return tuple(int(n) for n in shape[:3])
        extent = np.asarray(shape[:3], dtype=np.float64) * spacing
        return tuple(max(1, math.ceil(e / t - 1e-6)) for e, t in zip(extent, target))

    def check_grid(self, shape: Sequence[int], affine: np.ndarray, where: object = "image") -> None:
        """Refuse (ValueError naming ``where``) a volume whose resampled grid exceeds ``load_image``'s voxel
        limit, or holds no voxel along an axis.

        A 16^3 scan of 1000 mm voxels at 4 mm would be a 4000^3 grid: refused here, before any
        memory is allocated, rather than by the allocator or after hours of sliding windows. A scan
        shorter than one voxel of ``target_spacing`` along an axis would be resampled to nothing
        (TorchIO floors the grid's size).
        """
        spacing = np.round(voxel_sizes(affine), 3).tolist()
        target_spacing = resampled_spacing(voxel_sizes(affine), self.target_spacing)
        if target_spacing is not None:
            extent = [float(n * s) for n, s in zip(shape[:3], voxel_sizes(affine))]
            if any(e < t * (1 - SPACING_RTOL) for e, t in zip(extent, target_spacing)):
                raise ValueError(
                    f"{where}: shape {tuple(int(n) for n in shape)} at spacing {spacing} mm spans "
                    f"{[round(e, 3) for e in extent]} mm, less than one voxel of the model's "
                    f"{list(self.target_spacing)} mm along an axis: too small to predict"
                )
        target = self.network_shape(shape, affine)
        voxels = math.prod(target)
        if voxels > MAX_VOXELS:
            raise ValueError(
                f"{where}: shape {tuple(int(n) for n in shape)} at spacing {spacing} mm resampled to "
                f"{list(self.target_spacing)} mm is a {target} grid ({voxels} voxels, limit {MAX_VOXELS}); "
                "is the spacing in the header right?"
            )

    def to_native_grid(
        self, values: np.ndarray, affine: np.ndarray | None, shape: Sequence[int], native_affine: np.ndarray | None
    ) -> np.ndarray:
        """``values`` on the network grid resampled (linearly) back to a volume of ``shape`` and ``native_affine``."""
        if self.target_spacing is None or resampled_spacing(voxel_sizes(native_affine), self.target_spacing) is None:
            return values
        native = tio.Resample((tuple(int(s) for s in shape), np.asarray(native_affine)))(_scalar(values, affine))
        return np.ascontiguousarray(native.data[0].numpy(), dtype=np.float32)


def _scalar(array: np.ndarray, affine: np.ndarray) -> tio.ScalarImage:
    return tio.ScalarImage(tensor=torch.from_numpy(np.asarray(array, dtype=np.float32))[None], affine=affine)
