import pytest
import torch

from wspet.model.unet3d import UNet3D


def test_paper_network_output_shape_and_range():
    net = UNet3D()  # the paper's widths 16..256, 5 levels
    x = torch.randn(1, 1, 32, 32, 16)
    logits = net(x)
    probs = net.probabilities(x)
    assert logits.shape == (1, 1, 32, 32, 16)
    assert probs.dtype == torch.float32
    assert 0.0 <= probs.min().item() and probs.max().item() <= 1.0
    assert torch.allclose(probs, torch.sigmoid(logits))


def test_width_and_depth_are_configurable():
    net = UNet3D(features=(4, 8, 16))
    assert net.divisor == 4
    assert net(torch.randn(2, 1, 8, 12, 16)).shape == (2, 1, 8, 12, 16)
    small, large = (sum(p.numel() for p in m.parameters()) for m in (net, UNet3D()))
    assert small < large


def test_uses_selu_inside():
    net = UNet3D(features=(4, 8))
    assert any(isinstance(m, torch.nn.SELU) for m in net.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())


@pytest.mark.parametrize(
    "shape, message",
    [((1, 2, 16, 16, 16), "expects input"), ((1, 1, 16, 16), "expects input"), ((1, 1, 16, 16, 12), "divisible by 16")],
)
def test_bad_input_is_refused_with_the_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        UNet3D()(torch.zeros(shape))


def test_bad_features_refused():
    with pytest.raises(ValueError, match=r"\[8\]"):
        UNet3D(features=(8,))


def test_bf16_autocast_still_returns_float32_probabilities():
    net = UNet3D(features=(4, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = net.probabilities(torch.randn(1, 1, 8, 8, 8))
    assert probs.dtype == torch.float32


def test_normalised_variant_uses_instance_norm_and_leaky_relu_and_keeps_state_dict_names():
    paper, normed = UNet3D(features=(4, 8)), UNet3D(features=(4, 8), norm="instance", activation="leaky_relu")
    assert sum(isinstance(m, torch.nn.InstanceNorm3d) for m in normed.modules()) == 6  # 2 per level, 3 levels of blocks
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in normed.modules())
    assert not any(isinstance(m, torch.nn.SELU) for m in normed.modules())
    # The paper's net keeps the layer indices its checkpoints were saved with.
    assert "encoders.0.2.weight" in paper.state_dict() and "encoders.0.3.weight" in normed.state_dict()
    x = torch.randn(2, 1, 8, 8, 8)
    # Instance norm: each sample's activations are normalised, so scaling the input barely changes the output.
    assert torch.allclose(normed(x), normed(10 * x), atol=1e-3)


@pytest.mark.parametrize("kwargs, message", [({"norm": "batch"}, "norm 'batch'"), ({"activation": "relu"}, "activation 'relu'")])
def test_unknown_norm_or_activation_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet3D(**kwargs)


def test_deep_supervision_heads_give_each_level_between_top_and_coarsest_its_scale_and_leave_the_top_unchanged():
    plain = UNet3D(features=(4, 8, 16, 32, 64))
    deep = UNet3D(features=(4, 8, 16, 32, 64), deep_supervision=True)
    missing, unexpected = deep.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 1, 16, 32, 48)
    scales = deep.multiscale_logits(x)
    # nnU-Net's: every decoder level but the coarsest (1/8 here), whose weight it sets to 0.
    assert [tuple(s.shape) for s in scales] == [(2, 1, 16, 32, 48), (2, 1, 8, 16, 24), (2, 1, 4, 8, 12)]
    # The heads are extra layers on the same trunk: forward is the top head alone.
    assert unexpected == [] and sorted(missing) == [
        "auxiliary_heads.0.bias", "auxiliary_heads.0.weight", "auxiliary_heads.1.bias", "auxiliary_heads.1.weight",
    ]
    assert torch.equal(deep(x), scales[0])
    assert torch.allclose(deep(x), plain(x))
    assert len(plain.multiscale_logits(x)) == 1


@pytest.mark.parametrize("features, heads", [((4, 8), 0), ((4, 8, 16), 0), ((4, 8, 16, 32), 1), ((16, 32, 64, 128, 256), 2)])
def test_deep_supervision_heads_follow_the_depth(features, heads):
    assert len(UNet3D(features=features, deep_supervision=True).auxiliary_heads) == heads


@pytest.mark.parametrize("value", [2, 1, "true", None])
def test_deep_supervision_not_a_boolean_is_refused(value):
    with pytest.raises(ValueError, match=r"deep_supervision must be true or false, got"):
        UNet3D(features=(4, 8, 16, 32), deep_supervision=value)
