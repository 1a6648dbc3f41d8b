import numpy as np
import pytest
import torch

from wspet.data import format as dataset_format
from wspet.data.datamodule import PetDataModule, split_validation
from wspet.data.sampling import BoxCentredSampler, box_sampling_weights, numbered_boxes
from tests.data.helpers import drop_boxes, store_in_other_axes


def test_split_is_seeded_and_disjoint(tiny_dataset):
    cases = dataset_format.read_dataset(tiny_dataset).training
    train_a, val_a = split_validation(cases, 0.34, seed=1)
    train_b, val_b = split_validation(cases, 0.34, seed=1)
    _, val_c = split_validation(cases, 0.34, seed=2)
    assert [c.name for c in val_a] == [c.name for c in val_b]
    assert len(val_a) == 2 and len(train_a) == 4
    assert not {c.name for c in train_a} & {c.name for c in val_a}
    assert [c.name for c in val_a] != [c.name for c in val_c] or len(cases) < 3


def test_bad_val_fraction_refused(tiny_dataset):
    cases = dataset_format.read_dataset(tiny_dataset).training
    with pytest.raises(ValueError, match="1.5"):
        split_validation(cases, 1.5, seed=0)


def test_a_split_without_validation_is_refused_before_training(tiny_dataset):
    # It used to pass the check and fail in TorchIO ("Subjects list is empty") once training began.
    with pytest.raises(dataset_format.DatasetError, match=r"data\.val_fraction 0\.0 is not in \(0, 1\).*collapse guard"):
        PetDataModule(tiny_dataset, volume_size=(32, 32, 32), patch_size=(16, 16, 16), val_fraction=0.0).setup("fit")
    one = dataset_format.read_dataset(tiny_dataset).training[:1]
    with pytest.raises(ValueError, match=r"1 training case\(s\): training needs 2 or more"):
        split_validation(one, 0.2, seed=0)


@pytest.mark.parametrize(("n", "fraction", "expected_val"), [(2, 0.75, 1), (2, 0.01, 1), (5, 0.2, 1), (10, 0.95, 9), (40, 0.2, 8)])
def test_every_split_keeps_a_case_on_each_side(tiny_dataset, n, fraction, expected_val):
    case = dataset_format.read_dataset(tiny_dataset).training[0]
    train, val = split_validation([case] * n, fraction, seed=0)
    assert (len(train), len(val)) == (n - expected_val, expected_val)


def test_training_batches_hold_image_and_box_patches(tiny_dataset):
    dm = PetDataModule(tiny_dataset, volume_size=(32, 32, 32), patch_size=(16, 16, 16), batch_size=2, val_fraction=0.34)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"]["data"].shape == (2, 1, 16, 16, 16)
    assert batch["box"]["data"].shape == (2, 1, 16, 16, 16)
    assert "label" not in batch  # weak supervision never sees a training label
    image = batch["image"]["data"]
    assert abs(float(image.mean())) < 1.5  # z-normalised input


def test_validation_volumes_have_labels_for_the_metric_only(tiny_dataset):
    dm = PetDataModule(tiny_dataset, volume_size=(32, 32, 32), patch_size=(16, 16, 16), val_fraction=0.34)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"]["data"].shape == (1, 1, 32, 32, 32)
    assert "label" in batch
    assert all("label" not in s for s in dm.train_subjects)


def test_weak_setup_reads_no_training_label(tiny_dataset, monkeypatch):
    read = []
    original = dataset_format.load_label

    def spy(path, image):
        read.append(path)
        return original(path, image)

    monkeypatch.setattr("wspet.data.datamodule.load_label", spy)
    dm = PetDataModule(tiny_dataset, volume_size=(32, 32, 32), patch_size=(16, 16, 16), val_fraction=0.34, val_labels=False)
    dm.setup()
    assert read == []  # every phantom case has boxes, so no label is needed
    full = PetDataModule(tiny_dataset, supervision="label", volume_size=(32, 32, 32), patch_size=(16, 16, 16), val_fraction=0.34)
    full.setup()
    assert len(read) == 6 and all("label" in s for s in full.train_subjects)


def test_box_sampling_weights_put_the_probability_on_the_box():
    box = torch.zeros(1, 10, 10, 10)
    box[0, 2:4, 2:4, 2:4] = 1
    weights = box_sampling_weights(box, 0.7)
    assert float(weights[box > 0].sum()) == pytest.approx(0.7)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert torch.all(box_sampling_weights(torch.zeros(1, 4, 4, 4), 0.7) == 1.0)


def test_sampled_patches_are_centred_in_the_box_as_often_as_asked():
    import torchio as tio

    torch.manual_seed(0)
    box = torch.zeros(1, 40, 40, 40, dtype=torch.uint8)
    box[0, 25:30, 10:15, 20:25] = 1
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 40, 40, 40)), box=tio.LabelMap(tensor=box))
    sampler = BoxCentredSampler((8, 8, 8), probability=0.7)
    centred = [bool(p["box"].data[0, 4, 4, 4]) for p in sampler(subject, num_patches=400)]
    assert np.mean(centred) == pytest.approx(0.7, abs=0.08)
    with pytest.raises(ValueError, match="1.2"):
        BoxCentredSampler((8, 8, 8), probability=1.2)


def test_patch_larger_than_volume_refused(tiny_dataset):
    with pytest.raises(ValueError, match="larger than volume_size"):
        PetDataModule(tiny_dataset, volume_size=(32, 32, 32), patch_size=(48, 32, 32))


def test_without_volume_size_volumes_stay_whole_padded_to_the_multiple_and_the_patch(tmp_path):
    from wspet.datasets.phantom import write_phantom_dataset

    root = tmp_path / "odd"
    write_phantom_dataset(root, n_train=3, n_test=1, seed=2, shape=(40, 36, 28))
    dm = PetDataModule(root, volume_size=None, patch_size=(16, 16, 40), shape_multiple=16, val_fraction=0.34)
    dm.setup()
    volume = next(iter(dm.val_dataloader()))
    # 40 -> 48 and 36 -> 48 (multiples of 16); 28 -> 40 (the patch) -> 48 (the multiple): nothing cropped.
    assert volume["image"]["data"].shape[2:] == (48, 48, 48)
    raw = dm.val_subjects[0]["box"].data
    assert volume["box"]["data"].sum() == raw.sum()  # every box voxel is still there
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"]["data"].shape[2:] == (16, 16, 40)


def test_pseudo_supervision_carries_labels_made_in_the_boxes(tiny_dataset):
    dm = PetDataModule(tiny_dataset, supervision="pseudo", volume_size=(32, 32, 32), patch_size=(16, 16, 16),
                       val_fraction=0.34, pseudo_labels={"method": "fraction", "band": 0.0})
    dm.setup()
    subject = dm.train_subjects[0]
    pseudo, box = subject["pseudo"].data, subject["box"].data
    assert "label" not in subject  # made from the image and boxes, never from a training label
    assert pseudo.sum() > 0 and torch.all(pseudo[box == 0] == 0)  # lesion only inside boxes
    batch = next(iter(dm.train_dataloader()))
    assert batch["pseudo"]["data"].shape == (2, 1, 16, 16, 16)


def test_volumes_are_prepared_once_and_patches_cut_from_them(tiny_dataset):
    """Z-scores and padding run once in setup; a draw only augments (off here) and cuts a patch."""
    import torchio as tio

    dm = PetDataModule(tiny_dataset, volume_size=None, patch_size=(16, 16, 16), val_fraction=0.34,
                       flip_probability=0.0, noise_std=0.0)
    dm.setup()
    train_cases, _ = split_validation(dataset_format.read_dataset(tiny_dataset).training, 0.34, 0)
    raw = [dm._subject(case, read_label=False) for case in train_cases]
    prepared = {s["name"]: s for s in dm.train_subjects}
    for subject in raw:
        assert torch.equal(prepared[subject["name"]]["image"].data, dm.volume_transform()(subject)["image"].data)
    patches = 0
    for batch in dm.patch_loader(range(len(train_cases))):
        for name, location, patch in zip(batch["name"], batch[tio.LOCATION], batch["image"]["data"]):
            i0, j0, k0, i1, j1, k1 = location.tolist()
            assert torch.equal(patch, prepared[name]["image"].data[:, i0:i1, j0:j1, k0:k1])
            patches += 1
    assert patches == len(train_cases) * dm.samples_per_volume
    assert dm.median_spacing() == [round(float(s), 6) for s in raw[0]["image"].spacing]


def test_affine_augmentation_moves_image_and_pseudo_labels_together(tiny_dataset):
    dm = PetDataModule(tiny_dataset, supervision="pseudo", volume_size=None, patch_size=(16, 16, 16), val_fraction=0.34,
                       flip_probability=0.0, noise_std=0.0, pseudo_labels={"method": "fraction", "band": 0.0},
                       affine={"p": 1.0, "scales": (1.3, 1.3), "degrees": (10, 10)})
    dm.setup()
    subject = dm.train_subjects[0]
    augmented = dm.augmentation()(subject)
    image, pseudo = augmented["image"].data, augmented["pseudo"].data
    assert not torch.equal(image, subject["image"].data)
    assert set(torch.unique(pseudo).tolist()) <= {0, 1, 2}  # labels stay labels (nearest neighbour)
    # scaled by 1.3 in each axis, the lesion grows: the voxels marked lesion grow with it
    assert (pseudo == 1).sum() > 1.5 * (subject["pseudo"].data == 1).sum()
    # the hottest voxels are still lesion: image and labels moved together
    hottest = image >= torch.quantile(image.flatten(), 0.999)
    assert (pseudo[hottest] == 1).float().mean() > 0.8


def test_intensity_scale_multiplies_the_image_only(tiny_dataset):
    dm = PetDataModule(tiny_dataset, volume_size=None, patch_size=(16, 16, 16), val_fraction=0.34,
                       flip_probability=0.0, noise_std=0.0, intensity_scale=[1.0, 1.5, 1.5])
    dm.setup()
    subject = dm.train_subjects[0]
    augmented = dm.augmentation()(subject)
    assert torch.allclose(augmented["image"].data, 1.5 * subject["image"].data)
    assert torch.equal(augmented["box"].data, subject["box"].data)


@pytest.mark.parametrize("value", [[1.5, 0.9, 1.1], [0.5, 1.2, 0.8], [0.5, 0.0, 1.0], [0.5, 1.0]])
def test_a_bad_intensity_scale_is_refused(tiny_dataset, value):
    with pytest.raises(ValueError, match="intensity_scale"):
        PetDataModule(tiny_dataset, intensity_scale=value)


def test_a_volume_stored_in_another_axis_order_is_turned_to_the_majoritys(tmp_path):
    """Turned in setup, the case's image, boxes and pseudo-labels are those of the same case
    stored like the others; the median spacing is compared in that axis order."""
    from wspet.datasets.phantom import write_phantom_dataset

    roots = {}
    for kind in ("usual", "turned"):
        roots[kind] = tmp_path / kind
        write_phantom_dataset(roots[kind], n_train=4, n_test=1, seed=5, shape=(32, 28, 24), spacing=(2.0, 2.5, 4.0))
    drop_boxes(roots["usual"], "hn_001")
    store_in_other_axes(roots["turned"], "hn_001", "SLP")
    modules = {}
    for kind, root in roots.items():
        modules[kind] = PetDataModule(root, supervision="pseudo", volume_size=None, patch_size=(16, 16, 16),
                                      val_fraction=0.25, pseudo_labels={"method": "otsu"})
        modules[kind].check()  # the turned case's spacing (4, 2, 2.5) is not refused
        modules[kind].setup()
    usual, turned = ({s["name"]: s for s in m.train_subjects + m.val_subjects} for m in modules.values())
    assert turned["hn_001"]["image"].orientation == ("R", "A", "S")
    for key in ("image", "box", "pseudo"):
        assert torch.equal(turned["hn_001"][key].data, usual["hn_001"][key].data), key
    assert turned["hn_001"]["box"].data.sum() > 0
    assert modules["turned"].orientation() == ["R", "A", "S"]
    assert modules["turned"].median_spacing() == modules["usual"].median_spacing() == [2.0, 2.5, 4.0]


def store_at_spacing(root, name: str, spacing) -> None:
    """Give case ``name``'s image and label the voxel ``spacing`` (mm) in their headers: a scan of another scanner."""
    import nibabel as nib

    for folder in ("imagesTr", "labelsTr"):
        path = root / folder / f"{name}.nii.gz"
        old = nib.load(path)
        affine = old.affine.copy()
        affine[:3, :3] = np.diag(spacing)
        nib.save(nib.Nifti1Image(np.asarray(old.dataobj), affine), path)


def test_auto_target_spacing_resamples_a_mixed_set_to_its_median(tmp_path):
    """A case from another scanner is refused at native spacing and resampled under ``auto``;
    cases already at the median spacing are left exactly as at native spacing."""
    from wspet.data.format import DatasetError
    from wspet.datasets.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path, n_train=4, n_test=1, seed=5, shape=(32, 28, 24), spacing=(2.0, 2.5, 4.0))
    store_at_spacing(tmp_path, "hn_002", (3.0, 2.5, 4.0))
    options = dict(volume_size=None, patch_size=(16, 16, 16), val_fraction=0.25, flip_probability=0.0, noise_std=0.0)
    with pytest.raises(DatasetError, match=r"hn_002.nii.gz: spacing \(3, 2.5, 4\) mm is 1.50x the median"):
        PetDataModule(tmp_path, target_spacing=None, **options).check()
    auto = PetDataModule(tmp_path, target_spacing="auto", **options)
    auto.check()
    auto.setup()
    assert auto.preprocessing.target_spacing == (2.0, 2.5, 4.0)
    subjects = {s["name"]: s for s in [*auto.train_subjects, *auto.val_subjects]}
    assert np.allclose(subjects["hn_002"]["image"].spacing, (2.0, 2.5, 4.0))
    assert subjects["hn_002"]["image"].spatial_shape[0] == 48  # 32 voxels of 3 mm, now 2 mm each
    native = PetDataModule(tmp_path, target_spacing=None, **options)
    native.setup()
    assert len(native.train_subjects) == 3 and len(native.val_subjects) == 1
    for subject in [*native.train_subjects, *native.val_subjects]:
        if subject["name"] != "hn_002":
            assert torch.equal(subject["image"].data, subjects[subject["name"]]["image"].data)
            assert torch.equal(subject["box"].data, subjects[subject["name"]]["box"].data)


def test_an_unknown_target_spacing_word_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match="target_spacing 'median' is not a spacing in mm, null or 'auto'"):
        PetDataModule(tiny_dataset, target_spacing="median")


def test_an_unknown_box_balance_is_refused_by_name(tiny_dataset):
    with pytest.raises(ValueError, match="box_balance 'per_lesion'"):
        PetDataModule(tiny_dataset, box_balance="per_lesion")


def test_the_patch_queue_samples_with_the_box_balance(tiny_dataset):
    dm = PetDataModule(tiny_dataset, volume_size=None, patch_size=(8, 8, 8), val_fraction=0.34, box_balance="per_box")
    dm.setup()
    sampler = dm.patch_loader(range(len(dm.train_subjects))).dataset.sampler
    assert sampler.box_balance == "per_box"
    balanced = 0
    for subject in dm.train_subjects:
        weights = sampler.get_probability_map(subject)
        boxes = numbered_boxes(subject["box"].data)
        # A box with no voxel half a patch from the border can hold no centre and gets no part.
        shares = [float(weights[boxes == k].sum() / weights.sum()) for k in range(1, int(boxes.max()) + 1)]
        centred = [share for share in shares if share > 0]
        assert sum(centred) == pytest.approx(0.7) and max(centred) - min(centred) < 1e-9
        balanced += len(centred) >= 2
    assert balanced >= 1


@pytest.mark.parametrize("setting, value, message", [
    ("samples_per_volume", 0, "data.samples_per_volume=0 is not a whole number >= 1"),
    ("batch_size", 0, "data.batch_size=0 is not a whole number >= 1"),
    ("queue_length", -3, "data.queue_length=-3 is not a whole number >= 1"),
    ("batch_size", 1.5, "data.batch_size=1.5 is not a whole number >= 1"),
    ("patch_size", (16, 0, 16), r"data.patch_size\[1\]=0 is not a whole number >= 1"),
    ("num_workers", -1, "data.num_workers=-1 is not a whole number >= 0"),
    ("flip_probability", 1.5, r"data.flip_probability=1.5 is not in \[0, 1\]"),
    ("noise_std", -1.0, "data.noise_std=-1.0 is not a standard deviation >= 0"),
    ("noise_std", float("nan"), "data.noise_std=nan is not a standard deviation >= 0"),
])
def test_a_count_below_one_or_a_chance_outside_0_1_is_refused_by_name(tiny_dataset, setting, value, message):
    """0 samples per volume trained no step at all and reported a test Dice of 0 without a word."""
    with pytest.raises(ValueError, match=message):
        PetDataModule(tiny_dataset, **{"patch_size": (16, 16, 16), setting: value})
