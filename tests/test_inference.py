import numpy as np
import pytest
import torch

from wspet.inference import predict_probabilities
from wspet.module import LesionSegmenter


def tiny_model() -> LesionSegmenter:
    torch.manual_seed(0)
    return LesionSegmenter(net={"features": [4, 8]}, loss={"_target_": "wspet.losses.DiceLoss"})


def test_sliding_window_covers_a_volume_larger_than_the_window():
    image = np.random.default_rng(0).gamma(2.0, 0.5, size=(40, 30, 20)).astype(np.float32)
    probs = predict_probabilities(tiny_model(), image, np.eye(4), window=(16, 16, 16), overlap=(4, 4, 4))
    assert probs.shape == image.shape
    assert probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def test_sliding_window_matches_one_whole_window_where_it_fits():
    image = np.random.default_rng(1).gamma(2.0, 0.5, size=(16, 16, 16)).astype(np.float32)
    model = tiny_model()
    probs = predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(0, 0, 0))
    normalised = (image - image.mean()) / image.std()
    with torch.no_grad():
        direct = model(torch.from_numpy(normalised)[None, None])[0, 0].numpy()
    assert np.allclose(probs, direct, atol=1e-4)


@pytest.mark.parametrize("window, overlap, message", [((15, 16, 16), (0, 0, 0), "divisible by 2"), ((16, 16, 16), (3, 0, 0), "even")])
def test_bad_window_refused(window, overlap, message):
    with pytest.raises(ValueError, match=message):
        predict_probabilities(tiny_model(), np.ones((16, 16, 16), np.float32), np.eye(4), window, overlap)


def test_a_volume_the_window_covers_takes_one_forward_pass(monkeypatch):
    model = tiny_model()
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (calls.append(x.shape[0]), forward(x))[1])
    image = np.random.default_rng(2).gamma(2.0, 0.5, size=(16, 16, 12)).astype(np.float32)
    probs = predict_probabilities(model, image, np.eye(4), window=(16, 16, 16), overlap=(8, 8, 8), batch_size=8)
    assert sum(calls) == 1 and probs.shape == (16, 16, 12)
