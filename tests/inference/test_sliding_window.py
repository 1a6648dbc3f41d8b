"""Sliding-window inference: window placement, Gaussian blending, bounded memory, the model path."""

import functools
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.format import Volume
from wspet.inference.sliding_window import (
    DEFAULT_OVERLAP, DEFAULT_WINDOW, fit_window, gaussian_importance, mirrored, predict_mask,
    predict_probabilities, sliding_window, warn_if_spacing_differs, window_starts,
)
from wspet.model.module import LesionSegmenter


def tiny_model() -> LesionSegmenter:
    torch.manual_seed(0)
    return LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"})


def constant(value: float):
    return lambda batch: torch.full_like(batch, value)


# --------------------------------------------------------------------------- window placement


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 300), window=st.integers(1, 64), data=st.data())
def test_windows_cover_the_axis_with_at_least_the_overlap(size, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    if size <= window:
        assert starts == [0]
        return
    assert starts[-1] == size - window  # the last window ends at the volume's end, none sticks out
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(window - gaps >= overlap)
    # the fewest windows: one fewer could not keep the overlap
    assert (len(starts) - 2) * (window - overlap) < size - window


def test_whole_body_geometry():
    # STS_001 (128 x 128 x 267) with the default 128 x 128 x 64 window and 32 x 32 x 16 overlap:
    # one window across each transverse slice, 6 along the body (24 with 96 x 96 x 64 windows)
    window, overlap = fit_window(DEFAULT_WINDOW, DEFAULT_OVERLAP, (128, 128, 267), 16)
    starts = [window_starts(n, w, o) for n, w, o in zip((128, 128, 267), window, overlap)]
    assert starts == [[0], [0], [0, 41, 81, 122, 162, 203]]
    assert window_starts(128, 96, 32) == [0, 32]


@pytest.mark.parametrize("shape, divisor, fitted, overlap", [
    ((96, 96, 64), 16, (96, 96, 64), (32, 32, 16)),  # a phantom: as the 96 x 96 x 64 window did
    ((128, 128, 267), 16, (128, 128, 64), (32, 32, 16)),  # a whole body: the window itself
    ((40, 20, 300), 16, (48, 32, 64), (32, 31, 16)),  # rounded up to the U-Net's multiple
    ((5, 5, 5), 2, (6, 6, 6), (5, 5, 5)),
])
def test_the_window_is_cut_to_a_smaller_volume(shape, divisor, fitted, overlap):
    assert fit_window(DEFAULT_WINDOW, DEFAULT_OVERLAP, shape, divisor) == (fitted, overlap)


# --------------------------------------------------------------------------- Gaussian blending


def test_gaussian_importance_is_nnunets():
    weights = gaussian_importance((16, 12, 8))
    assert weights.shape == (16, 12, 8) and weights.dtype == np.float32
    assert np.allclose(weights, weights[::-1, ::-1, ::-1])  # centred
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    profile = weights[:, 5, 3] / weights[:, 5, 3].max()
    offset = np.arange(16) - 7.5
    expected = np.exp(-0.5 * (offset / 2.0) ** 2)  # sigma = 16 / 8
    assert np.allclose(profile, expected / expected.max(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(37, 29, 21), (10, 40, 16), (16, 16, 16)])
def test_a_constant_model_gives_a_constant_volume(shape):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = sliding_window(constant(0.3), volume, (16, 16, 16), (5, 6, 3), batch_size=3)
    assert out.shape == shape and out.dtype == np.float32
    assert np.abs(out - 0.3).max() < 1e-6  # no seams: the weights are normalised everywhere


def test_a_pointwise_model_gives_its_value_everywhere_on_a_ramp():
    # Every window predicts the same value at each voxel, so any misplaced window or weight shows.
    i, j, k = np.meshgrid(np.arange(45), np.arange(33), np.arange(27), indexing="ij")
    ramp = (0.5 * i - 0.25 * j + 0.1 * k).astype(np.float32)
    out = sliding_window(lambda batch: 2 * batch + 1, ramp, (16, 16, 16), (8, 4, 6), batch_size=2)
    assert np.allclose(out, 2 * ramp + 1, atol=1e-5)


def test_a_model_of_the_wrong_shape_or_nan_is_refused():
    volume = np.zeros((20, 20, 20), np.float32)
    shapes = r"model output shape \(2, 1, 8, 8, 8\) != window batch shape \(2, 1, 16, 16, 16\)"
    with pytest.raises(ValueError, match=shapes):
        sliding_window(lambda b: b[..., :8, :8, :8], volume, (16, 16, 16), (4, 4, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        sliding_window(constant(float("nan")), volume, (16, 16, 16), (4, 4, 4))


def test_memory_does_not_grow_with_the_number_of_windows():
    # The model's outputs are numpy-allocated here, so tracemalloc sees every window buffer: were
    # they kept until the end, 17^3 windows of 16^3 float32 (80 MB) would show in the peak.
    volume = np.random.default_rng(1).normal(size=(48, 48, 48)).astype(np.float32)
    window_bytes = 16**3 * 4

    def model(batch):
        return torch.from_numpy(np.full(tuple(batch.shape), 0.5, np.float32))

    peaks = {}
    for overlap in (0, 14):  # 27 windows, then 4913
        tracemalloc.start()
        sliding_window(model, volume, (16, 16, 16), (overlap,) * 3, batch_size=2)
        peaks[overlap] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # the two accumulators, a finiteness check (bool), a few batches of windows and their weights
    bound = 3 * volume.nbytes + 16 * window_bytes
    assert peaks[0] < bound and peaks[14] < bound, (peaks, bound)
    assert peaks[14] - peaks[0] < 16 * window_bytes  # 180x the windows, a few windows more memory


# --------------------------------------------------------------------------- the model


def test_sliding_window_covers_a_volume_larger_than_the_window():
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(40, 30, 20)).astype(np.float32)
    probs = predict_probabilities(tiny_model(), image, np.eye(4), window=(16, 16, 16), overlap=(4, 4, 4))
    assert probs.shape == image.shape
    assert probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def test_sliding_window_matches_one_whole_window_where_it_fits():
    image = np.random.default_rng(1).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    model = tiny_model()
    probs = predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(0, 0, 0), precision="32-true")
    assert np.allclose(probs, direct_prediction(model, image), atol=1e-5)


def direct_prediction(model: LesionSegmenter, image: np.ndarray) -> np.ndarray:
    """The float32 network on the whole z-scored image, no windows."""
    normalised = (image - image.mean()) / image.std(ddof=1)
    with torch.no_grad():
        return model(torch.from_numpy(normalised)[None, None])[0, 0].numpy()


@pytest.mark.parametrize("flags, network_dtype", [("avx2 avx512_bf16 amx_bf16", torch.bfloat16), ("avx2", torch.float32)])
def test_auto_precision_follows_the_hardware_and_keeps_float32_probabilities(flags, network_dtype, monkeypatch):
    import wspet.inference.sliding_window
    from wspet.model.precision import resolve_precision

    faked = functools.partial(resolve_precision, cpu_flags=lambda: flags.split(), cpu_capability=lambda: "AVX512")
    monkeypatch.setattr(wspet.inference.sliding_window, "resolve_precision", faked)
    model = tiny_model()
    head_dtypes = []
    model.net.head.register_forward_hook(lambda module, inputs, output: head_dtypes.append(output.dtype))
    image = np.random.default_rng(1).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    probs = predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(0, 0, 0))
    assert head_dtypes == [network_dtype] and probs.dtype == np.float32
    error = np.abs(probs - direct_prediction(model, image)).max()
    assert error < (2e-2 if network_dtype == torch.bfloat16 else 1e-5)  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("window, overlap, message", [
    ((15, 16, 16), (0, 0, 0), "divisible by 2"),
    ((16, 16, 16), (16, 0, 0), "smaller than the window"),
    ((16, 16, 16), (-2, 0, 0), ">= 0"),
])
def test_bad_window_refused(window, overlap, message):
    with pytest.raises(ValueError, match=message):
        predict_probabilities(tiny_model(), np.ones((16, 16, 16), np.float32), np.eye(4), window, overlap)


def test_a_constant_image_is_refused():
    with pytest.raises(ValueError, match=r"image shape \(16, 16, 16\) is constant"):
        predict_probabilities(tiny_model(), np.ones((16, 16, 16), np.float32), np.eye(4), (16, 16, 16), (0, 0, 0))


def record_batch_sizes(model: LesionSegmenter, monkeypatch) -> list[int]:
    """The list that ``model``'s forward passes will append their batch sizes to."""
    calls: list[int] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (calls.append(x.shape[0]), forward(x))[1])
    return calls


def test_a_volume_the_window_covers_takes_one_forward_pass(monkeypatch):
    model = tiny_model()
    calls = record_batch_sizes(model, monkeypatch)
    image = np.random.default_rng(2).gamma(2.0, 0.5, size=(16, 16, 12)).astype(np.float32)
    probs = predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(8, 8, 8), batch_size=8)
    assert sum(calls) == 1 and probs.shape == (16, 16, 12)


def test_a_small_volume_is_padded_to_the_unets_multiple_not_to_the_window(monkeypatch):
    model = tiny_model()  # 2 levels: sizes divisible by 2
    shapes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (shapes.append(tuple(x.shape)), forward(x))[1])
    image = np.random.default_rng(4).gamma(2.0, 0.5, size=(11, 16, 20)).astype(np.float32)
    probs = predict_probabilities(model, image, np.eye(4), window=(64, 64, 64), overlap=(16, 16, 16))
    assert shapes == [(1, 1, 12, 16, 20)] and probs.shape == (11, 16, 20)


def test_batches_hold_at_most_batch_size_windows(monkeypatch):
    model = tiny_model()
    calls = record_batch_sizes(model, monkeypatch)
    image = np.random.default_rng(3).gamma(2.0, 0.5, size=(40, 16, 16)).astype(np.float32)
    predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(4, 0, 0), batch_size=2)
    assert calls == [2, 1]  # 3 windows along i


# --------------------------------------------------------------------------- spacing warning


def volume(spacing, path="scan.nii.gz") -> Volume:
    return Volume(np.ones((4, 4, 4), np.float32), np.diag([*spacing, 1.0]), Path(path))


@pytest.mark.parametrize("trained, scan, preprocessing, warned", [
    ([2.0, 2.0, 2.0], (4.0, 4.0, 2.0), None, True),
    ([2.0, 2.0, 2.0], (2.2, 2.0, 1.8), None, False),
    ([2.0, 2.0, 2.0], (4.0, 4.0, 2.0), {"target_spacing": [2.0, 2.0, 2.0]}, False),  # resampled anyway
    (None, (4.0, 4.0, 2.0), None, False),  # a checkpoint that does not say
])
def test_a_scan_far_off_the_training_spacing_is_warned_about(trained, scan, preprocessing, warned, caplog):
    model = LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"},
                            preprocessing=preprocessing, training_spacing=trained)
    with caplog.at_level(logging.WARNING, logger="wspet.inference.sliding_window"):
        assert warn_if_spacing_differs(model, volume(scan, "/data/pat7.nii.gz")) is warned
    if warned:
        assert "/data/pat7.nii.gz: spacing (4, 4, 2) mm is 2.00x off the (2, 2, 2) mm" in caplog.text
        assert "lesions will look smaller" in caplog.text
    else:
        assert caplog.text == ""


# --------------------------------------------------------------------------- ensembles


def test_an_ensemble_thresholds_the_mean_of_its_models_probabilities():
    image = np.random.default_rng(2).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"}))
    each = [predict_probabilities(m, image, np.eye(4), window=(16, 16, 16), overlap=(0, 0, 0)) for m in models]
    threshold = float(np.median(np.mean(each, axis=0)))  # splits the volume, whatever the random weights give
    mask = predict_mask(models, Volume(image, np.eye(4), Path("scan.nii.gz")), window=(16, 16, 16),
                        overlap=(0, 0, 0), threshold=threshold)
    assert np.array_equal(mask, np.mean(each, axis=0) > threshold)
    assert 0 < mask.sum() < mask.size
    assert not all(np.array_equal(mask, e > threshold) for e in each)  # not any one model's answer


def test_one_model_and_an_ensemble_of_it_alone_agree():
    image = np.random.default_rng(3).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    model = tiny_model()
    volume_ = Volume(image, np.eye(4), Path("scan.nii.gz"))
    threshold = float(np.median(predict_probabilities(model, image, np.eye(4), (16, 16, 16), (0, 0, 0))))
    single = predict_mask(model, volume_, window=(16, 16, 16), overlap=(0, 0, 0), threshold=threshold)
    assert np.array_equal(single, predict_mask([model], volume_, window=(16, 16, 16), overlap=(0, 0, 0),
                                               threshold=threshold))
    with pytest.raises(ValueError, match="no model to predict with"):
        predict_mask([], volume_)


# --------------------------------------------------------------------------- test-time mirroring


def ramp_along(dim: int):
    """A window function whose output is its voxels' index along ``dim`` of ``(B, 1, I, J, K)``."""
    def fn(batch):
        shape = [1] * batch.ndim
        shape[dim] = batch.shape[dim]
        return torch.zeros_like(batch) + torch.arange(batch.shape[dim], dtype=batch.dtype).reshape(shape)
    return fn


def test_mirroring_averages_each_flip_flipped_back_along_the_right_axis():
    batch = torch.zeros(2, 1, 4, 6, 8)
    # mirrored along volume axis 0 (tensor dim 2): index i and its mirror 3 - i average to 1.5
    assert torch.allclose(mirrored(ramp_along(2), (0,))(batch), torch.full_like(batch, 1.5))
    # mirrored along the other axes only: the ramp along axis 0 is untouched
    assert torch.equal(mirrored(ramp_along(2), (1, 2))(batch), ramp_along(2)(batch))
    assert torch.allclose(mirrored(ramp_along(4), (0, 2))(batch), torch.full_like(batch, 3.5))


@pytest.mark.parametrize("axes, passes", [((), 1), ((2,), 2), ((0, 2), 4), ((0, 1, 2), 8)])
def test_mirroring_costs_one_pass_per_subset_of_its_axes(axes, passes):
    calls = []
    fn = mirrored(lambda b: calls.append(b.clone()) or torch.zeros_like(b), axes)
    fn(torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4))
    assert len(calls) == passes
    assert len({c.numpy().tobytes() for c in calls}) == passes  # each pass a different view


def test_mirrored_prediction_is_the_mean_of_the_flipped_scans_predictions():
    image = np.random.default_rng(4).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    model = tiny_model()
    # float32: under bf16 autocast (precision=auto on AVX512-BF16 CPUs) the two routes round apart by ~1e-3
    predict = functools.partial(
        predict_probabilities, model, affine=np.eye(4), window=(16, 16, 16), overlap=(0, 0, 0), precision="32"
    )
    plain = predict(image)
    expected = (plain + predict(image[:, :, ::-1].copy())[:, :, ::-1]) / 2
    got = predict(image, mirror_axes=[2])
    assert np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-4)  # the random net is not mirror-symmetric
    with pytest.raises(ValueError, match="mirror_axes"):
        predict(image, mirror_axes=[5])


@pytest.mark.parametrize("threshold", [1.5, -0.2, float("nan"), "0.5", True])
def test_a_threshold_that_is_not_a_probability_is_refused(threshold):
    """1.5 or NaN gave an empty mask and -0.2 a full one, without a word."""
    from wspet.inference.sliding_window import check_threshold

    with pytest.raises(ValueError, match=r"threshold .* is not a probability in \[0, 1\]"):
        check_threshold(threshold)
    assert check_threshold(0) == 0.0 and check_threshold(1) == 1.0 and check_threshold(0.3) == 0.3
