"""wspet.data.sampling: patch centres on the boxes and, optionally, on hard negatives (normal uptake)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from hypothesis import given, settings
from hypothesis import strategies as st

from wspet.data.sampling import BoxCentredSampler, box_sampling_weights, hard_negatives, numbered_boxes


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


def two_boxes(small: int, large: int) -> torch.Tensor:
    """A (1, 24, 24, 24) union of a small^3 box and a separate large^3 box."""
    box = torch.zeros(1, 24, 24, 24)
    box[:, 1 : 1 + small, 1 : 1 + small, 1 : 1 + small] = 1
    box[:, 10 : 10 + large, 10 : 10 + large, 10 : 10 + large] = 1
    return box


@given(small=st.integers(1, 7), large=st.integers(1, 13), share=st.floats(0.05, 1.0))
@settings(max_examples=40, deadline=None)
def test_per_box_every_box_gets_an_equal_part_whatever_its_size(small, large, share):
    union = two_boxes(small, large)
    numbers = numbered_boxes(union)
    assert int(numbers.max()) == 2 and torch.equal(numbers > 0, union > 0)
    even = box_sampling_weights(numbers, share)
    per_voxel = box_sampling_weights(union, share)
    for k, volume in ((1, small**3), (2, large**3)):
        assert float(even[numbers == k].sum() / even.sum()) == pytest.approx(share / 2, rel=1e-9)
        by_size = volume / (small**3 + large**3) * share
        assert float(per_voxel[numbers == k].sum() / per_voxel.sum()) == pytest.approx(by_size, rel=1e-9)
    assert float(even[union == 0].sum() / even.sum()) == pytest.approx(1 - share, abs=1e-9)


def test_every_patch_in_a_box_when_the_share_is_one():
    box = two_boxes(2, 5)
    weights = box_sampling_weights(box, 1.0)
    assert float(weights[box == 0].sum()) == 0.0 and float(weights[box > 0].sum()) > 0


def test_the_per_box_sampler_centres_a_small_box_as_often_as_a_large_one():
    box = two_boxes(2, 6)  # 8 and 216 voxels
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.rand(1, 24, 24, 24)), box=tio.LabelMap(tensor=box))
    counts = {}
    for balance in ("per_voxel", "per_box"):
        torch.manual_seed(0)
        sampler = BoxCentredSampler((2, 2, 2), probability=1.0, box_balance=balance)
        centres = [patch[tio.LOCATION][:3].numpy() + 1 for patch in sampler(subject, num_patches=400)]
        counts[balance] = np.mean([all(1 <= c < 3 for c in centre) for centre in centres])
    assert counts["per_voxel"] == pytest.approx(8 / 224, abs=0.03)
    assert counts["per_box"] == pytest.approx(0.5, abs=0.08)


def test_an_unknown_box_balance_is_refused():
    with pytest.raises(ValueError, match="'per_lesion'"):
        BoxCentredSampler((4, 4, 4), box_balance="per_lesion")
