"""LightningDataModule: wspet datasets as TorchIO subjects, patches for training, volumes for validation.

Built from ``conf/data`` by its ``_target_`` (the loss adds ``supervision`` and ``pseudo_labels``): a
data option is a key of the yaml and an argument here, nothing else. The module also makes the
phantom set when asked to and none is there (``prepare_data``), and checks every case before any
training time is spent (``check``).
"""

from __future__ import annotations

import dataclasses
import functools

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchio as tio

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from wspet.data.boxes import boxes_to_mask
from wspet.data.check import SUPERVISIONS, majority_orientation, validate_dataset
from wspet.data.format import CaseEntry, DatasetError, case_boxes, load_image, load_label, load_label_map, read_dataset
from wspet.data.preprocessing import Preprocessing
from wspet.data.pseudo_labels import IGNORE, pseudo_label
from wspet.data.replay import EpochSeededLoader
from wspet.data.sampling import BOX_BALANCES, BoxCentredSampler

log = logging.getLogger(__name__)

AUTO_SPACING = "auto"  # data.target_spacing: the training volumes' median spacing


def split_validation(cases: Sequence[CaseEntry], fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split of the training list into (train, validation) cases, at least one of each.

    Training needs validation cases: they choose the kept checkpoint and feed the collapse guard
    and the convergence check, so a fraction of 0, or a list too short to split, is refused.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"data.val_fraction {fraction} is not in (0, 1): validation cases choose the kept checkpoint "
            "and feed the collapse guard and the convergence check, so training needs at least one"
        )
    if len(cases) < 2:
        raise ValueError(f"{len(cases)} training case(s): training needs 2 or more, one of them for validation")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(int(round(fraction * len(cases))), 1), len(cases) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [cases[i] for i in train], [cases[i] for i in val]


def make_subject(
    case: CaseEntry, *, read_label: bool, box_margin_mm: float, pseudo_labels: dict | None = None,
    pseudo_label_dir: Path | None = None,
) -> tio.Subject:
    """A TorchIO subject with ``image``, ``box``, when ``read_label`` ``label``, and with
    ``pseudo_labels`` (keyword arguments of :func:`~wspet.data.pseudo_labels.pseudo_label`) ``pseudo``:
    made from the boxes, or read from ``pseudo_label_dir/<case>.nii.gz`` when that is given
    (values 0, 1 and 2 = ignore; written by self-training, :mod:`wspet.training.self_training`).

    The label file is otherwise read only when the case has no boxes, to derive them.
    Tensors are decoded once here and kept in memory (the volumes are small).
    """
    image = load_image(case.image)
    label = None
    if case.label is not None and (read_label or case.boxes is None):
        label = load_label(case.label, image)
    boxes = case_boxes(case, image, label, margin_mm=box_margin_mm)
    box = boxes_to_mask(boxes, image.array.shape)
    fields = {
        "image": tio.ScalarImage(tensor=torch.from_numpy(image.array)[None], affine=image.affine),
        "box": tio.LabelMap(tensor=torch.from_numpy(box)[None], affine=image.affine),
        "name": case.name,
    }
    if pseudo_labels is not None:
        if pseudo_label_dir is not None:
            pseudo = load_label_map(Path(pseudo_label_dir) / f"{case.name}.nii.gz", image, n_labels=IGNORE + 1)
        else:
            pseudo = pseudo_label(image.array, boxes, **pseudo_labels)
        fields["pseudo"] = tio.LabelMap(tensor=torch.from_numpy(pseudo)[None], affine=image.affine)
    if read_label and label is not None:
        fields["label"] = tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=image.affine)
    return tio.Subject(fields)


def scale_randomly(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``image`` times one factor drawn uniformly from ``[low, high]`` (MONAI's RandScaleIntensity; TorchIO has none)."""
    return image * torch.empty((), dtype=image.dtype).uniform_(low, high)


def check_intensity_scale(value: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(p, low, high)`` as floats, or None; ValueError unless 0 <= p <= 1 and 0 < low <= high."""
    if not value:
        return None
    values = tuple(float(v) for v in value)
    if len(values) != 3 or not 0 <= values[0] <= 1 or not 0 < values[1] <= values[2]:
        raise ValueError(f"intensity_scale {list(value)} needs [p, low, high] with 0 <= p <= 1 and 0 < low <= high")
    return values


class PadToAtLeast(tio.SpatialTransform):
    """Pad a subject (evenly on both sides, with each image's minimum) to at least ``shape`` voxels."""

    def __init__(self, shape: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.shape = tuple(int(s) for s in shape)
        self.args_names = ["shape"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        missing = [max(0, want - have) for want, have in zip(self.shape, subject.spatial_shape)]
        if not any(missing):
            return subject
        padding = [side for m in missing for side in (m // 2, m - m // 2)]
        return tio.Pad(padding, padding_mode="minimum")(subject)


def _check_counts_and_chances(patch_size: Sequence[int], batch_size: int, samples_per_volume: int,
                              queue_length: int, flip_probability: float, noise_std: float, num_workers: int) -> None:
    """ValueError naming the setting for a count below 1 (0 samples per volume trained no step and
    reported a test Dice of 0), a chance outside [0, 1] or a negative noise level."""
    counts = {"batch_size": batch_size, "samples_per_volume": samples_per_volume, "queue_length": queue_length}
    for name, value in {**counts, **{f"patch_size[{axis}]": size for axis, size in enumerate(patch_size)}}.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"data.{name}={value!r} is not a whole number >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ValueError(f"data.num_workers={num_workers!r} is not a whole number >= 0")
    if not 0.0 <= float(flip_probability) <= 1.0:
        raise ValueError(f"data.flip_probability={flip_probability!r} is not in [0, 1]")
    if not float(noise_std) >= 0.0:
        raise ValueError(f"data.noise_std={noise_std!r} is not a standard deviation >= 0")


class PetDataModule(L.LightningDataModule):
    """Training patches and validation volumes from a wspet dataset folder.

    Training batches come from an :class:`~wspet.data.replay.EpochSeededLoader` (replayable on
    resume; under DDP each rank its own share of the volumes). Validation volumes are split over
    the ranks without the padding ``DistributedSampler`` adds, so that ``val/*`` means count every
    volume exactly once.

    Batches are TorchIO dicts; ``batch["image"]["data"]`` is ``(B, 1, D, H, W)`` normalised
    PET (:class:`~wspet.data.preprocessing.Preprocessing`), ``batch["box"]["data"]`` the union
    of the boxes, and ``batch["label"]["data"]`` the lesion mask where it is read: always for full supervision, and for validation cases only
    to report ``val/dice`` (never for a weak loss).

    Args:
        root: dataset folder (docs/dataset_format.md).
        supervision: ``box`` (weak: training labels are never read, except to derive missing
            boxes), ``pseudo`` (weak: labels made from the boxes, batch key ``pseudo``) or
            ``label`` (full supervision).
        pseudo_labels: how ``pseudo`` labels are made (keyword arguments of
            :func:`~wspet.data.pseudo_labels.pseudo_label`); used with ``supervision="pseudo"``.
        pseudo_label_dir: a folder of ``<case>.nii.gz`` label maps to use as ``pseudo`` labels
            instead (a self-training round's); ``None`` makes them from the boxes.
        volume_size: every volume is cropped or padded to this size (the paper's 160x160x128),
            after resampling to ``target_spacing``; ``None`` keeps each volume whole, padded to a
            multiple of ``shape_multiple`` and to at least ``patch_size``, so that training sees
            every part of a scan that inference will see.
        patch_size: training patch size, at most ``volume_size``; equal sizes train on whole
            volumes as the paper did.
        shape_multiple: with ``volume_size=None``, volumes are padded to a multiple of this (the
            U-Net's ``2 ** (levels - 1)``).
        box_sampling_probability: chance that a training patch is centred inside a box.
        box_balance: how that chance is shared among a volume's boxes: ``per_voxel`` (evenly over
            box voxels, so a box in proportion to its volume) or ``per_box`` (evenly over boxes,
            so a small lesion's box as often as a large one's; :mod:`wspet.data.sampling`).
        hard_negative_probability: chance that it is centred on a hard negative instead: a voxel
            outside every box above the ``hard_negative_quantile`` of the intensities there
            (normal uptake; :mod:`wspet.data.sampling`). 0 turns it off.
        target_spacing, intensity, suv_scale: the :class:`Preprocessing` of every volume
            (``zscore`` or ``suv`` intensities). ``target_spacing`` is a spacing in mm, ``None``
            (native spacing) or ``"auto"``: the median spacing of the training volumes, set by
            :meth:`setup` (nnU-Net's choice), so that a set of mixed spacings trains on one and
            prediction resamples a scan of another spacing to it; volumes already at it are left
            as they are.
        seed: the run's seed, from which every epoch's training draws are made.
        phantom: called with ``root`` by :meth:`prepare_data` when ``root`` has no
            ``dataset.json`` to make the dataset there (``conf/data/phantom.yaml``: the phantom
            generator, as a ``_partial_`` target); ``None`` for real data, which is never generated.
        max_spacing_ratio: :meth:`check` refuses cases whose spacing is off the median by more
            (``None``: no check; not applied with a ``target_spacing``).
        affine: ``None`` (off) or the arguments of ``tio.RandomAffine`` (``p``, ``scales``,
            ``degrees``, ...): random scaling and rotation of each training volume, with its boxes and
            labels (nearest neighbour), before patches are cut.
        intensity_scale: ``None`` (off) or ``(p, low, high)``: with chance ``p``, the normalised image is
            multiplied by a factor drawn uniformly from ``[low, high]`` (a scanner's calibration).
    """

    def __init__(
        self,
        root: str | Path,
        supervision: str = "box",
        volume_size: Sequence[int] | None = (96, 96, 64),
        patch_size: Sequence[int] = (64, 64, 64),
        shape_multiple: int = 16,
        batch_size: int = 2,
        samples_per_volume: int = 2,
        queue_length: int = 16,
        box_sampling_probability: float = 0.7,
        box_balance: str = "per_voxel",
        hard_negative_probability: float = 0.0,
        hard_negative_quantile: float = 0.99,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        val_labels: bool = True,
        box_margin_mm: float = 5.0,
        flip_axes: Sequence[int] = (0, 2),
        flip_probability: float = 0.5,
        noise_std: float = 0.1,
        num_workers: int = 0,
        target_spacing: Sequence[float] | str | None = None,
        intensity: str = "zscore",
        suv_scale: float = 1.0,
        pseudo_labels: dict | None = None,
        pseudo_label_dir: str | Path | None = None,
        seed: int = 0,
        phantom: Callable[[Path], object] | None = None,
        max_spacing_ratio: float | None = 1.2,
        affine: dict | None = None,
        intensity_scale: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.median_target_spacing = target_spacing == AUTO_SPACING  # resolved by setup()
        if isinstance(target_spacing, str) and not self.median_target_spacing:
            raise ValueError(f"target_spacing {target_spacing!r} is not a spacing in mm, null or {AUTO_SPACING!r}")
        self.preprocessing = Preprocessing(
            target_spacing=None if target_spacing is None or self.median_target_spacing else tuple(target_spacing),
            intensity=intensity, suv_scale=suv_scale,
        )
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision {supervision!r} is not one of {SUPERVISIONS}")
        self.root = Path(root)
        self.supervision = supervision
        self.pseudo_labels = (pseudo_labels or {}) if supervision == "pseudo" else None
        self.pseudo_label_dir = Path(pseudo_label_dir) if pseudo_label_dir else None
        self.volume_size = None if volume_size is None else tuple(int(s) for s in volume_size)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.shape_multiple = int(shape_multiple)
        if len(self.volume_size or (0, 0, 0)) != 3 or len(self.patch_size) != 3:
            raise ValueError(f"volume_size {volume_size} and patch_size {patch_size} need 3 values each")
        if self.volume_size and any(p > v for p, v in zip(self.patch_size, self.volume_size)):
            raise ValueError(f"patch_size {self.patch_size} is larger than volume_size {self.volume_size}")
        if self.shape_multiple < 1:
            raise ValueError(f"shape_multiple {shape_multiple} must be >= 1")
        _check_counts_and_chances(patch_size=self.patch_size, batch_size=batch_size,
                                  samples_per_volume=samples_per_volume, queue_length=queue_length,
                                  flip_probability=flip_probability, noise_std=noise_std, num_workers=num_workers)
        self.batch_size = batch_size
        self.samples_per_volume = samples_per_volume
        self.queue_length = queue_length
        self.box_sampling_probability = box_sampling_probability
        if box_balance not in BOX_BALANCES:
            raise ValueError(f"box_balance {box_balance!r} is not one of {BOX_BALANCES}")
        self.box_balance = box_balance
        self.hard_negative_probability = hard_negative_probability
        self.hard_negative_quantile = hard_negative_quantile
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.val_labels = val_labels
        self.box_margin_mm = box_margin_mm
        self.flip_axes = tuple(flip_axes)
        self._median_spacing: list[float] | None = None  # set by setup()
        self._orientation: list[str] | None = None  # set by setup()
        self.flip_probability = flip_probability
        self.noise_std = noise_std
        self.affine = dict(affine) if affine else None
        self.intensity_scale = check_intensity_scale(intensity_scale)
        self.num_workers = num_workers
        self.seed = seed
        self.phantom = phantom
        self.max_spacing_ratio = max_spacing_ratio
        self.train_subjects: list[tio.Subject] = []
        self.val_subjects: list[tio.Subject] = []

    def prepare_data(self) -> None:
        """Make the dataset at ``root`` with ``phantom`` if one is given and ``root`` has no dataset."""
        if self.phantom is None or (self.root / "dataset.json").is_file():
            return
        log.info("making the phantom dataset in %s", self.root)
        self.phantom(self.root)

    def check(self) -> None:
        """Validate every case for this supervision; log the warnings, raise listing every problem."""
        report = validate_dataset(
            self.root,
            supervision=self.supervision,
            box_margin_mm=self.box_margin_mm,
            # Resampling to one spacing makes differing native spacings harmless.
            max_spacing_ratio=None if self.resamples() else self.max_spacing_ratio,
        )
        for warning in report.warnings:
            log.warning(warning)
        report.raise_if_problems()
        log.info(report.summary())

    def setup(self, stage: str | None = None) -> None:
        if self.train_subjects:
            return
        index = read_dataset(self.root)
        try:
            train_cases, val_cases = split_validation(index.training, self.val_fraction, self.split_seed)
        except ValueError as error:
            raise DatasetError(self.root, [str(error)]) from None
        full = self.supervision == "label"
        train = [self._subject(c, read_label=full) for c in train_cases]
        val = [self._subject(c, read_label=full or self.val_labels) for c in val_cases]
        usual = majority_orientation(subject["image"].orientation for subject in train)
        self._orientation = list(usual) if usual else None
        if usual:  # the network sees arrays, not patient space: one axis order for all (prediction turns to it too)
            turn = tio.ToOrientation("".join(usual))
            train, val = [turn(subject) for subject in train], [turn(subject) for subject in val]
        spacings = np.array([subject["image"].spacing for subject in train])
        self._median_spacing = [round(float(s), 6) for s in np.median(spacings, axis=0)]
        if self.median_target_spacing:
            self.preprocessing = dataclasses.replace(self.preprocessing, target_spacing=tuple(self._median_spacing))
            log.info("target spacing: %s mm, the median of the training volumes", self._median_spacing)
        # The deterministic steps run once here, not at every draw: a step's batch then costs only
        # the augmentation and the patch (the loader was 9% of a bf16 step, docs/performance.md).
        prepare = self.volume_transform()
        self.train_subjects = [prepare(subject) for subject in train]
        self.val_subjects = [prepare(subject) for subject in val]
        log.info("%s: %d training and %d validation cases", self.root, len(train_cases), len(val_cases))

    def resamples(self) -> bool:
        """Whether volumes are resampled to one spacing (a ``target_spacing`` or ``"auto"``)."""
        return self.median_target_spacing or self.preprocessing.target_spacing is not None

    def median_spacing(self) -> list[float] | None:
        """Median voxel spacing in mm of the training volumes (before resampling, in :meth:`orientation`'s axis order); None before setup."""
        return self._median_spacing

    def orientation(self) -> list[str] | None:
        """Axis codes (``["L", "P", "S"]``) most training volumes have; None before setup.

        Every training and validation volume stored in another axis order is turned to this one
        in :meth:`setup` (TorchIO's ``ToOrientation``: a permutation and flips, no resampling), with
        its boxes and labels; :meth:`check` still warns about such volumes.
        """
        return self._orientation

    def _subject(self, case: CaseEntry, read_label: bool) -> tio.Subject:
        subject = make_subject(
            case, read_label=read_label, box_margin_mm=self.box_margin_mm, pseudo_labels=self.pseudo_labels,
            pseudo_label_dir=self.pseudo_label_dir,
        )
        if self.supervision == "label" and "label" not in subject:
            raise DatasetError(case.image, [f"{case.name} has no label, needed for full supervision"])
        return subject

    def volume_transform(self) -> tio.Compose:
        """Deterministic steps shared by training, validation and inference."""
        if self.volume_size is not None:
            return tio.Compose([*self.preprocessing.transforms(), tio.CropOrPad(self.volume_size, padding_mode="minimum")])
        return tio.Compose([
            *self.preprocessing.transforms(),
            PadToAtLeast(self.patch_size),
            tio.EnsureShapeMultiple(self.shape_multiple, method="pad"),
        ])

    def augmentation(self) -> tio.Compose:
        steps = []
        if self.flip_axes and self.flip_probability > 0:
            steps.append(tio.RandomFlip(axes=self.flip_axes, flip_probability=self.flip_probability))
        if self.affine:
            steps.append(tio.RandomAffine(**self.affine))
        if self.intensity_scale:
            p, low, high = self.intensity_scale
            steps.append(tio.Lambda(functools.partial(scale_randomly, low=low, high=high), include=["image"], p=p))
        if self.noise_std > 0:
            steps.append(tio.RandomNoise(std=(0, self.noise_std), include=["image"]))
        return tio.Compose(steps)

    def train_dataloader(self) -> EpochSeededLoader:
        return EpochSeededLoader(self.patch_loader, len(self.train_subjects), self.seed, self.trainer)

    def patch_loader(self, indices: Sequence[int]) -> tio.SubjectsLoader:
        """One epoch's training patches from the training volumes ``indices``."""
        queue = tio.Queue(
            tio.SubjectsDataset([self.train_subjects[i] for i in indices], transform=self.augmentation()),
            max_length=max(self.queue_length, self.samples_per_volume),
            samples_per_volume=self.samples_per_volume,
            sampler=BoxCentredSampler(
                self.patch_size, self.box_sampling_probability,
                hard_negative_probability=self.hard_negative_probability,
                hard_negative_quantile=self.hard_negative_quantile,
                box_balance=self.box_balance,
            ),
            num_workers=self.num_workers,
        )
        # The queue already runs the workers (loading and augmenting there); a second level of workers would copy it.
        # Pinned batches reach a GPU by asynchronous copies.
        return tio.SubjectsLoader(queue, batch_size=self.batch_size, num_workers=0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> tio.SubjectsLoader:
        dataset = tio.SubjectsDataset(self.val_subjects)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = None
        if world > 1:
            if len(dataset) < world:
                raise ValueError(
                    f"data.val_fraction {self.val_fraction}: {len(dataset)} validation volume(s) "
                    f"for {world} DDP processes; each process needs at least one"
                )
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return tio.SubjectsLoader(
            dataset, batch_size=1, num_workers=self.num_workers, sampler=sampler,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
        )
