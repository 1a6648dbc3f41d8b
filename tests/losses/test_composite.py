"""wspet.losses.composite_loss / CompositeLoss (eq. 1) and the conf/loss configs that instantiate the losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given
from omegaconf import OmegaConf

import wspet.losses as losses
from tests.losses.helpers import PROPERTY, SHAPES, autocast_and_widened, composite_reference, extreme_inputs
from tests.losses.helpers import random_inputs, value_and_grad
from wspet.losses import CompositeLoss, composite_loss, modified_dice_loss, mumford_shah_loss

CONF = Path(__file__).resolve().parents[2] / "conf" / "loss"
HYPER = [{}, {"beta": 2.0, "lam": 0.5, "alpha": 0.3, "w1": 2.0, "w2": 0.5, "eps": 0.1}]


@pytest.mark.parametrize("shape", SHAPES[:3])  # x 2 x 2 settings: three shapes are enough
@pytest.mark.parametrize("hyper", HYPER)
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_composite_matches_numpy_reference(shape, hyper, scale):
    i, p, b = random_inputs(sum(shape), shape, high=scale)
    got = composite_loss(i, p, b, **hyper)
    assert got.shape == () and got.dtype == torch.float32
    assert got.item() == pytest.approx(composite_reference(i.numpy(), p.numpy(), b.numpy(), **hyper), rel=1e-5)


def test_composite_is_weighted_sum_of_its_terms():
    i, p, b = random_inputs(3, (2, 1, 6, 6, 6))
    total = composite_loss(i, p, b, beta=3.0, lam=0.25)
    parts = 3.0 * modified_dice_loss(p, b) + 0.25 * mumford_shah_loss(i, p, b)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


def test_composite_gradcheck_float64():
    i, p, b = random_inputs(2, (2, 1, 3, 4, 3), 0.2, 0.8, torch.float64)  # in-box fraction ~0.5 > alpha
    inputs = (i.requires_grad_(True), p.requires_grad_(True))
    assert torch.autograd.gradcheck(lambda im, pr: composite_loss(im, pr, b, eps=0.3), inputs)


def test_module_returns_terms_for_logging():
    i, p, b = random_inputs(4, (2, 1, 6, 6, 6))
    b[1] = 0  # one volume without lesion
    p.requires_grad_(True)
    out = CompositeLoss(beta=10.0, lam=1.0)(i, p, b)
    assert set(out) == {"loss", "loss_mdice", "loss_ms", "box_fraction"}
    assert out["loss"].requires_grad and out["loss"].shape == ()
    assert out["loss_mdice"].item() == pytest.approx(modified_dice_loss(p, b).item(), rel=1e-6)
    assert out["loss_ms"].item() == pytest.approx(mumford_shah_loss(i, p, b).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(10 * out["loss_mdice"].item() + out["loss_ms"].item(), rel=1e-6)
    pd, bd = p.detach(), b
    fraction0 = ((pd[0] * bd[0]).sum() / bd[0].sum()).item()
    assert out["box_fraction"].item() == pytest.approx(fraction0 / 2, rel=1e-6)  # empty box counts as 0


def test_empty_box_gradient_pushes_every_voxel_down():
    i, p, b = random_inputs(5, (2, 1, 4, 4, 4))
    b[1] = 0
    p.requires_grad_(True)
    loss = composite_loss(i, p, b, beta=10.0)
    loss.backward()
    # Sample 1 contributes beta mean(p) / batch: each voxel gets beta / (N batch), summing to beta / 2.
    assert torch.allclose(p.grad[1], torch.full_like(p.grad[1], 10.0 / (64 * 2)))
    assert p.grad[1].sum().item() == pytest.approx(5.0, rel=1e-6)
    # One SGD step lowers every prediction of the empty volume.
    assert torch.all((p - 0.01 * p.grad)[1] < p[1])


@PROPERTY
@given(case=extreme_inputs())
def test_composite_finite_on_extremes(case):
    fill, i, p, b = case
    loss, grad = value_and_grad(lambda x: composite_loss(i, x, b), p)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if fill != "random":  # a random in-box fraction may sit within rounding of alpha
        ref = composite_reference(i.numpy(), p.numpy(), b.numpy())
        assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_composite_under_bf16_autocast_is_float32(dtype):
    i, p, b = random_inputs(6, (2, 1, 6, 6, 6))
    got, widened = autocast_and_widened(composite_loss, i, p, box=b, dtype=dtype)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(widened.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": -1.0}, r"beta must lie in \[0.0, inf\), got -1.0"),
        ({"lam": float("nan")}, r"lam must be a finite real number, got nan"),
        ({"beta": float("inf")}, r"beta must be a finite real number, got inf"),
        ({"alpha": 1.5}, r"alpha must lie in \[0.0, 1.0\), got 1.5"),
        ({"w1": -2.0}, r"w1 must .* got -2.0"),
        ({"eps": -0.03}, r"eps must lie in \(0.0, inf\), got -0.03"),
        ({"beta": "10"}, r"beta must be a finite real number, got '10'"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompositeLoss(**kwargs)
    i, p, b = random_inputs(7, (1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match=message):
        composite_loss(i, p, b, **kwargs)


def test_rejects_bad_shapes():
    i, p, b = random_inputs(8, (1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"probs shape \(1, 1, 4, 4, 4\) != box shape \(1, 1, 4, 4, 3\)"):
        composite_loss(i, p, b[..., :3])
    with pytest.raises(ValueError, match=r"box must be 5-D .* like probs \(1, 1, 4, 4, 4\), got shape \(1, 1, 4, 4\)"):
        composite_loss(i, p, b[..., 0])
    with pytest.raises(ValueError, match=r"probs must be 5-D"):
        composite_loss(i[0], p[0], b[0])


# -- conf/loss ---------------------------------------------------------------------------------

PAPER_DEFAULTS = {"beta": 10.0, "lam": 1.0, "alpha": 0.1, "w1": 1.0, "w2": 3.0, "eps": 0.03}
CONFIGS = {
    "fs": ("label", "DiceLoss", {}),
    "dice": ("box", "DiceLoss", {}),
    "mdice": ("box", "ModifiedDiceLoss", {"alpha": 0.1, "gate": "union"}),
    "mdice_ms": ("box", "CompositeLoss", {**PAPER_DEFAULTS, "gate": "union", "data_term": "paper"}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_config_instantiates_with_paper_defaults(name):
    supervision, cls, hyper = CONFIGS[name]
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert set(cfg) == {"name", "supervision", "learning_rate", "module"}
    assert cfg.learning_rate == 1e-4  # the paper's Dice-only losses saturated the U-Net at 3e-4
    assert cfg.name == name and cfg.supervision == supervision
    assert cfg.module._target_ == f"wspet.losses.{cls}"
    assert {k: v for k, v in cfg.module.items() if k != "_target_"} == hyper
    module = instantiate(cfg.module)
    assert isinstance(module, getattr(losses, cls))
    for key, value in hyper.items():
        assert getattr(module, key) == value
    i, p, b = random_inputs(9, (1, 1, 4, 4, 4))
    out = module(i, p, b)
    assert torch.isfinite(out["loss"]) and out["loss"].shape == ()
