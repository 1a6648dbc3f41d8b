"""Preprocessing: resampling to one spacing and back, fixed-SUV vs z-score intensities, config checks."""

import numpy as np
import pytest
import torch
import torchio as tio
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.datamodule import PetDataModule
from wspet.data.preprocessing import SPACING_RTOL, Preprocessing, resampled_spacing
from wspet.inference.sliding_window import predict_probabilities
from wspet.metrics import dice_score
from wspet.model.module import LesionSegmenter


def ball(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    """A ball of ``radius_mm`` at ``centre_mm`` (world, affine = diag(spacing)) on a grid of ``shape``."""
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij"), -1)
    return np.linalg.norm(grid - np.asarray(centre_mm), axis=-1) <= radius_mm


def scaled_affine(spacing) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    voxel = np.argwhere(mask).mean(0)
    return affine[:3, :3] @ voxel + affine[:3, 3]


def test_resampling_to_the_target_spacing_keeps_the_lesion_in_place():
    spacing = (3.90625, 3.90625, 3.27)
    lesion = ball((48, 48, 40), spacing, (90.0, 95.0, 60.0), 20.0)
    prepare = Preprocessing(target_spacing=(5.46875, 5.46875, 3.27))
    array, affine = prepare.to_network_grid(lesion.astype(np.float32), scaled_affine(spacing))
    assert np.allclose(np.diag(affine)[:3], [5.46875, 5.46875, 3.27])
    assert array.shape[:2] == (34, 34)  # 48 x 3.90625 mm = 187.5 mm = 34.3 voxels of 5.47 mm
    # The world position of the lesion moves by less than a voxel of the coarser grid.
    assert np.linalg.norm(centroid_mm(array > 0.5, affine) - centroid_mm(lesion, scaled_affine(spacing))) < 2.0


def test_resampling_there_and_back_returns_the_native_grid():
    spacing = (3.90625, 3.90625, 3.27)
    lesion = ball((48, 48, 40), spacing, (90.0, 95.0, 60.0), 20.0)
    affine = scaled_affine(spacing)
    prepare = Preprocessing(target_spacing=(5.46875, 5.46875, 3.27))
    coarse, coarse_affine = prepare.to_network_grid(lesion.astype(np.float32), affine)
    back = prepare.to_native_grid(coarse, coarse_affine, lesion.shape, affine)
    assert back.shape == lesion.shape and back.dtype == np.float32
    assert dice_score(back > 0.5, lesion) > 0.95


FLOAT32_3_27 = float(np.float32(3.27))  # 3.2699999809...: what a NIfTI header holds for 3.27 mm


def test_a_volume_at_the_target_spacing_in_float32_keeps_every_slice_and_value():
    # TorchIO's Resample alone floored 64 x 3.2699999809 / 3.27 to 63 slices, each half a slice off.
    image = np.random.default_rng(4).gamma(2.0, 0.5, size=(20, 18, 64)).astype(np.float32)
    label = (image > 1.5).astype(np.uint8)
    affine = scaled_affine((5.46875, 5.46875, FLOAT32_3_27))
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
                          label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine))
    prepare = Preprocessing(target_spacing=(5.46875, 5.46875, 3.27), intensity="suv")
    prepared = tio.Compose(prepare.transforms())(subject)
    assert prepared["image"].shape == (1, 20, 18, 64)
    assert np.array_equal(prepared["image"].data[0].numpy(), image)
    assert np.array_equal(prepared["label"].data[0].numpy(), label)
    array, network_affine = prepare.to_network_grid(image, affine)
    assert array is image and network_affine is affine
    assert prepare.to_native_grid(array, network_affine, image.shape, affine) is array
    assert prepare.network_shape(image.shape, affine) == (20, 18, 64)


def test_only_the_axes_off_the_target_are_resampled():
    image = np.random.default_rng(5).gamma(2.0, 0.5, size=(48, 48, 40)).astype(np.float32)
    prepare = Preprocessing(target_spacing=(5.46875, 5.46875, 3.27))
    array, affine = prepare.to_network_grid(image, scaled_affine((3.90625, 3.90625, FLOAT32_3_27)))
    assert array.shape == (34, 34, 40)  # 48 x 3.90625 / 5.46875 = 34.3 in plane; every slice kept
    assert np.allclose(np.diag(affine)[:3], (5.46875, 5.46875, FLOAT32_3_27))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.5, 8.0), min_size=3, max_size=3), st.lists(st.floats(0.5, 8.0), min_size=3, max_size=3))
def test_each_axis_gets_the_target_or_keeps_its_own_spacing_when_close(own, target):
    spacing = resampled_spacing(own, target)
    close = [abs(o - t) <= SPACING_RTOL * abs(t) for o, t in zip(own, target)]
    if all(close):
        assert spacing is None
    else:
        assert spacing == tuple(o if c else t for o, t, c in zip(own, target, close))
    assert resampled_spacing(own, None) is None


def test_without_a_target_spacing_nothing_is_resampled():
    image = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    prepare = Preprocessing()
    array, affine = prepare.to_network_grid(image, None)
    assert array is image and affine is None
    assert prepare.to_native_grid(array, None, image.shape, None) is array


def test_suv_scaling_is_the_same_for_a_crop_and_the_whole_volume():
    volume = np.random.default_rng(1).gamma(2.0, 0.5, size=(30, 30, 30)).astype(np.float32)
    crop = volume[10:20, 10:20, 10:20]
    suv = Preprocessing(intensity="suv", suv_scale=2.0)
    assert np.allclose(suv.normalise(volume)[10:20, 10:20, 10:20], suv.normalise(crop))
    assert np.allclose(suv.normalise(crop), crop / 2.0)
    zscore = Preprocessing()
    # The reason for the suv mode: a z-score depends on the field of view.
    assert not np.allclose(zscore.normalise(volume)[10:20, 10:20, 10:20], zscore.normalise(crop), atol=1e-2)


def test_the_torchio_steps_match_the_array_steps():
    image = np.random.default_rng(2).gamma(2.0, 0.5, size=(12, 10, 8)).astype(np.float32)
    for prepare in (Preprocessing(), Preprocessing(intensity="suv", suv_scale=3.0)):
        subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)[None]))
        transformed = tio.Compose(prepare.transforms())(subject)
        assert np.allclose(transformed["image"].data[0].numpy(), prepare.normalise(image), atol=1e-5)


@pytest.mark.parametrize("arguments, message", [
    ({"target_spacing": (1.0, 2.0)}, r"target_spacing \(1.0, 2.0\) is not 3 positive"),
    ({"target_spacing": (1.0, 0.0, 2.0)}, "is not 3 positive"),
    ({"target_spacing": (1.0, float("nan"), 2.0)}, "is not 3 positive"),
    ({"intensity": "minmax"}, "intensity 'minmax' is not one of"),
    ({"suv_scale": 0.0}, "suv_scale 0.0 is not a positive"),
])
def test_bad_settings_are_refused_with_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**arguments)


def test_checkpoint_round_trip_and_old_checkpoints():
    prepare = Preprocessing(target_spacing=(4, 4, 3), intensity="suv", suv_scale=2.5)
    assert prepare.as_dict() == {"target_spacing": [4.0, 4.0, 3.0], "intensity": "suv", "suv_scale": 2.5}
    assert Preprocessing.from_dict(prepare.as_dict()) == prepare
    assert Preprocessing.from_dict(None) == Preprocessing()
    with pytest.raises(ValueError, match=r"unknown preprocessing keys \['spacing'\]"):
        Preprocessing.from_dict({"spacing": [1, 1, 1]})


def test_the_data_module_resamples_cases_of_different_spacing_to_one(tmp_path):
    module = PetDataModule(tmp_path, volume_size=(32, 32, 32), patch_size=(16, 16, 16), target_spacing=(4.0, 4.0, 4.0))
    box = np.zeros((20, 20, 20), np.uint8)
    box[4:14, 4:14, 4:14] = 1
    shapes = []
    for spacing in ((2.0, 2.0, 4.0), (4.0, 4.0, 2.0)):
        image = np.random.default_rng(3).gamma(2.0, 0.5, size=(20, 20, 20)).astype(np.float32)
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=scaled_affine(spacing)),
            box=tio.LabelMap(tensor=torch.from_numpy(box)[None], affine=scaled_affine(spacing)),
        )
        prepared = module.volume_transform()(subject)
        assert np.allclose(prepared["image"].spacing, (4.0, 4.0, 4.0))
        shapes.append(int(prepared["box"].data.sum()))
    # 1000 voxels of 16 mm^3 and of 32 mm^3: 250 and 500 voxels of 64 mm^3 after resampling.
    assert shapes == [250, 500]


def stub_segmenter(preprocessing: Preprocessing) -> LesionSegmenter:
    """A segmenter whose 'network' says lesion wherever the normalised input is above 1."""
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"},
                            preprocessing=preprocessing.as_dict())
    model.forward = lambda image: (image > 1.0).float()
    return model


def test_inference_resamples_to_the_training_spacing_and_back():
    spacing = (3.90625, 3.90625, 3.27)
    lesion = ball((40, 40, 40), spacing, (80.0, 75.0, 65.0), 18.0)
    image = np.where(lesion, 5.0, 0.5).astype(np.float32)
    model = stub_segmenter(Preprocessing(target_spacing=(5.46875, 5.46875, 3.27), intensity="suv", suv_scale=2.0))
    calls = []
    forward = model.forward
    model.forward = lambda x: (calls.append(x.shape[0]), forward(x))[1]
    probs = predict_probabilities(model, image, scaled_affine(spacing), window=(16, 16, 16), overlap=(0, 0, 4))
    assert probs.shape == image.shape
    assert dice_score(probs > 0.5, lesion) > 0.9
    assert sum(calls) == 2 * 2 * 3  # windows over the 29 x 29 x 40 network grid (3 x 3 x 3 on the native one)


def test_inference_at_a_target_spacing_needs_the_affine():
    model = stub_segmenter(Preprocessing(target_spacing=(2.0, 2.0, 2.0)))
    with pytest.raises(ValueError, match="needs the image's affine"):
        predict_probabilities(model, np.ones((16, 16, 16), np.float32), None, (16, 16, 16), (0, 0, 0))


def test_the_checkpoint_carries_the_preprocessing(tmp_path):
    prepare = Preprocessing(target_spacing=(5.0, 5.0, 3.0), intensity="suv", suv_scale=2.0)
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"},
                            preprocessing=prepare.as_dict())
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    assert LesionSegmenter.from_checkpoint(path).preprocessing == prepare
