"""wspet.data.sampling: patch centres on the boxes and, optionally, on hard negatives (normal uptake)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.sampling import BoxCentredSampler, box_sampling_weights, hard_negatives


def volume() -> tuple[torch.Tensor, torch.Tensor]:
    """(image, box) (1, 16, 16, 16): a box around a warm lesion and a hotter organ outside it."""
    image = torch.ones(1, 16, 16, 16)
    image[:, 3:6, 3:6, 3:6] = 4.0   # the lesion, inside the box
    image[:, 10:14, 10:14, 10:14] = 9.0  # the organ: 64 voxels of normal uptake, the hottest
    box = torch.zeros_like(image)
    box[:, 2:7, 2:7, 2:7] = 1
    return image, box


@given(box_share=st.floats(0.05, 0.9), hot_share=st.floats(0.01, 1.0))
@settings(max_examples=40, deadline=None)
def test_each_group_gets_its_share(box_share, hot_share):
    image, box = volume()
    hot_share = hot_share * (1 - box_share) * 0.99
    hot = hard_negatives(image, box, 0.98)
    weights = box_sampling_weights(box, box_share, hot=hot, hot_probability=hot_share)
    total = weights.sum()
    assert float(weights[box > 0].sum() / total) == pytest.approx(box_share, rel=1e-9)
    assert float(weights[hot].sum() / total) == pytest.approx(hot_share, rel=1e-9, abs=1e-12)
    assert float(weights[(box == 0) & ~hot].sum() / total) == pytest.approx(1 - box_share - hot_share, rel=1e-6, abs=1e-9)


def test_hard_negatives_are_the_hottest_voxels_outside_the_boxes():
    image, box = volume()
    hot = hard_negatives(image, box, 0.98)  # above the 98% quantile of the outside voxels (1.0): the organ
    assert hot[:, 10:14, 10:14, 10:14].all()
    assert not hot[box > 0].any()  # the lesion is hot too, but inside its box
    assert not hard_negatives(image, torch.ones_like(box), 0.5).any()  # nothing lies outside


def test_without_hard_negatives_the_weights_are_the_box_sampling_ones():
    image, box = volume()
    plain = box_sampling_weights(box, 0.7)
    assert torch.equal(box_sampling_weights(box, 0.7, hot=hard_negatives(image, box, 0.98), hot_probability=0.0), plain)


def test_the_sampler_centres_the_asked_share_on_hard_negatives():
    image, box = volume()
    subject = tio.Subject(image=tio.ScalarImage(tensor=image), box=tio.LabelMap(tensor=box))
    sampler = BoxCentredSampler((4, 4, 4), probability=0.3, hard_negative_probability=0.4, hard_negative_quantile=0.98)
    torch.manual_seed(0)
    centres = [patch[tio.LOCATION][:3].numpy() + 2 for patch in sampler(subject, num_patches=600)]
    on_organ = np.mean([all(10 <= c < 14 for c in centre) for centre in centres])
    in_box = np.mean([all(2 <= c < 7 for c in centre) for centre in centres])
    assert on_organ == pytest.approx(0.4, abs=0.1) and in_box == pytest.approx(0.3, abs=0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"probability": 0.8, "hard_negative_probability": 0.3}, "hard negative probability 0.3"),
    ({"hard_negative_quantile": 1.0}, "hard negative quantile 1.0"),
])
def test_bad_shares_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoxCentredSampler((4, 4, 4), **kwargs)
